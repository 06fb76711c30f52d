#include <aqua/eigen.hpp>
#include <aqua/projection.hpp>

#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <vector>

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

/// Naive x P in double: out_j = sum_i x_i P(i, j).
std::vector<double> naive_project(const std::vector<float>& x, const aqua::head_projection& p) {
  std::vector<double> out(static_cast<std::size_t>(p.d()), 0.0);
  for (index_t j = 0; j < p.d(); ++j)
    for (index_t i = 0; i < p.d(); ++i)
      out[static_cast<std::size_t>(j)] += double(x[static_cast<std::size_t>(i)]) * double(p.basis()(i, j));
  return out;
}

}  // namespace

TEST_CASE("a random orthogonal basis satisfies P^T P = I within 1e-5 in float", "[projection]") {
  for (index_t d : {1, 7, 64, 128}) {
    const auto p = aqua::head_projection::random_orthogonal(d, 42);
    REQUIRE(p.d() == d);
    double worst = 0;
    for (index_t a = 0; a < d; ++a)
      for (index_t b = 0; b < d; ++b) {
        double dot = 0;
        for (index_t i = 0; i < d; ++i) dot += double(p.basis()(i, a)) * double(p.basis()(i, b));
        worst = aqua_test::max_or_nan(worst, std::abs(dot - (a == b ? 1.0 : 0.0)));
      }
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("the same seed gives the same random basis and another seed a different one", "[projection]") {
  const auto a = aqua::head_projection::random_orthogonal(16, 7);
  const auto b = aqua::head_projection::random_orthogonal(16, 7);
  const auto c = aqua::head_projection::random_orthogonal(16, 8);
  CHECK(a.basis() == b.basis());
  CHECK_FALSE(a.basis() == c.basis());
}

TEST_CASE("the identity projection leaves vectors unchanged", "[projection]") {
  const auto p = aqua::head_projection::identity(5);
  std::vector<float> x = {1, -2, 3, 0.5f, 7}, out(5);
  p.project(x.data(), out.data());
  CHECK(out == x);
  CHECK(p.singular_values().size() == 5);
}

TEST_CASE("projecting one vector computes x P with column j as projected dimension j", "[projection]") {
  const index_t d = 24;
  const auto p = aqua::head_projection::random_orthogonal(d, 3);
  std::vector<float> x(static_cast<std::size_t>(d)), out(static_cast<std::size_t>(d));
  aqua_test::fill_normal(x, 11);
  p.project(x.data(), out.data());
  const auto ref = naive_project(x, p);
  for (index_t j = 0; j < d; ++j) CHECK(out[std::size_t(j)] == Approx(ref[std::size_t(j)]).margin(1e-5));

  // Strided input and output views give the same numbers.
  std::vector<float> xs(static_cast<std::size_t>(2 * d)), os(static_cast<std::size_t>(3 * d), -1.0f);
  for (index_t i = 0; i < d; ++i) xs[std::size_t(2 * i)] = x[std::size_t(i)];
  p.project(aqua::vector_view<const float>(xs.data(), {d}, {2}),
            aqua::vector_view<float>(os.data(), {d}, {3}));
  for (index_t j = 0; j < d; ++j) CHECK(os[std::size_t(3 * j)] == Approx(ref[std::size_t(j)]).margin(1e-5));
}

TEST_CASE("projecting a batch of rows equals projecting each row", "[projection]") {
  const index_t d = 32, rows = 9;
  const auto p = aqua::head_projection::random_orthogonal(d, 5);
  std::vector<float> x(static_cast<std::size_t>(rows * (d + 3)));
  aqua_test::fill_normal(x, 2);
  // Padded rows: a strided view.
  aqua::matrix_view<const float> xv(x.data(), {rows, d}, {d + 3, 1});
  const aqua::row_matrix<float> out = p.project_rows(xv);
  for (index_t r = 0; r < rows; ++r) {
    std::vector<float> row(x.begin() + r * (d + 3), x.begin() + r * (d + 3) + d);
    const auto ref = naive_project(row, p);
    for (index_t j = 0; j < d; ++j) CHECK(out(r, j) == Approx(ref[std::size_t(j)]).margin(1e-5));
  }
}

TEST_CASE("projection preserves dot products because the basis is orthogonal", "[projection]") {
  const index_t d = 64;
  const auto p = aqua::head_projection::random_orthogonal(d, 9);
  std::vector<float> q(static_cast<std::size_t>(d)), k(static_cast<std::size_t>(d)), qp(q.size()),
      kp(k.size());
  aqua_test::fill_normal(q, 1);
  aqua_test::fill_normal(k, 2);
  p.project(q.data(), qp.data());
  p.project(k.data(), kp.data());
  double exact = 0, projected = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    exact += double(q[i]) * k[i];
    projected += double(qp[i]) * kp[i];
  }
  CHECK(projected == Approx(exact).margin(1e-4));
}

TEST_CASE("a head projection rejects non-orthogonal bases and bad singular values", "[projection]") {
  aqua::row_matrix<float> b = aqua::row_matrix<float>::Identity(3, 3);
  b(0, 1) = 0.1f;
  CHECK_THROWS_WITH(aqua::head_projection(b, Eigen::VectorXd::Ones(3)), Contains("not orthogonal"));
  CHECK_THROWS_WITH(aqua::head_projection(aqua::row_matrix<float>::Identity(3, 3), Eigen::Vector3d(1, 2, 0)),
                    Contains("must not increase"));
  CHECK_THROWS_WITH(aqua::head_projection(aqua::row_matrix<float>::Identity(3, 3), Eigen::Vector3d(1, 1, -1)),
                    Contains("non-negative"));
  CHECK_THROWS_WITH(aqua::head_projection(aqua::row_matrix<float>::Identity(3, 2), Eigen::Vector3d(1, 1, 1)),
                    Contains("square"));
  CHECK_THROWS_WITH(aqua::head_projection(aqua::row_matrix<float>::Identity(3, 3), Eigen::Vector2d(1, 1)),
                    Contains("2 singular values"));
}

TEST_CASE("projecting a batch checks shapes and names the argument", "[projection]") {
  const auto p = aqua::head_projection::identity(4);
  std::vector<float> x(12), out(12);
  CHECK_THROWS_WITH(
      p.project_rows(aqua::make_view<const float>(x.data(), 4, 3), aqua::make_view(out.data(), 4, 3)),
      Contains("x has shape [4, 3]"));
  CHECK_THROWS_WITH(
      p.project_rows(aqua::make_view<const float>(x.data(), 3, 4), aqua::make_view(out.data(), 2, 4)),
      Contains("out has shape [2, 4]"));
  CHECK_THROWS_WITH(aqua::head_projection().project_rows(aqua::make_view<const float>(x.data(), 3, 4),
                                                         aqua::make_view(out.data(), 3, 4)),
                    Contains("empty"));
}

TEST_CASE("a projection set maps query heads to their KV head and keeps metadata", "[projection]") {
  auto set = aqua::projection_set::random_orthogonal(2, 3, 8, 4, 1);
  CHECK(set.layers() == 2);
  CHECK(set.kv_heads() == 3);
  CHECK(set.query_heads() == 12);
  CHECK(set.d() == 8);
  CHECK(set.group_size() == 4);
  CHECK(&set.query_head(1, 5) == &set.head(1, 1));
  CHECK(&set.query_head(1, 11) == &set.head(1, 2));
  CHECK_FALSE(set.head(0, 0).basis() == set.head(0, 1).basis());
  CHECK_FALSE(set.head(0, 0).basis() == set.head(1, 0).basis());
  set.metadata()["model"] = "tiny";
  CHECK(set.metadata().at("model") == "tiny");
  CHECK_THROWS_WITH(set.head(2, 0), Contains("layer 2 is outside [0, 2)"));
  CHECK_THROWS_WITH(set.head(0, 3), Contains("KV head 3 is outside [0, 3)"));
  CHECK_THROWS_WITH(set.set_head(0, 0, aqua::head_projection::identity(4)), Contains("d = 4"));
  CHECK_THROWS_WITH(aqua::projection_set(1, 0, 8, 1), Contains("kv_heads must be at least 1"));

  const auto id = aqua::projection_set::identity(1, 2, 4);
  CHECK(id.head(0, 1).basis() == aqua::row_matrix<float>::Identity(4, 4));
  CHECK(id.group_size() == 1);
}

TEST_CASE("calibration sources convert to and from their names", "[projection]") {
  for (auto s : {aqua::calibration_source::queries, aqua::calibration_source::keys,
                 aqua::calibration_source::queries_and_keys})
    CHECK(aqua::parse_calibration_source(aqua::to_string(s)) == s);
  CHECK_THROWS_WITH(aqua::parse_calibration_source("values"), Contains("unknown source \"values\""));
}
