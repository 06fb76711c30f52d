#include <aqua/calibrate.hpp>
#include <aqua/eigen.hpp>

#include <Eigen/SVD>
#include <catch2/catch.hpp>

#include "kernel_support.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <thread>
#include <vector>

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

using rowf = aqua::row_matrix<float>;

rowf random_rows(index_t rows, index_t d, std::uint32_t seed, double stddev = 1.0) {
  std::vector<float> v(static_cast<std::size_t>(rows * d));
  aqua_test::fill_normal(v, seed, stddev);
  return Eigen::Map<rowf>(v.data(), rows, d);
}

/// Rows drawn from a planted subspace: z A (A has `rank` orthonormal rows) plus small isotropic
/// noise, with decreasing scales along the planted directions.
rowf planted_rows(index_t rows, index_t d, index_t rank, const Eigen::MatrixXd& a, std::uint32_t seed) {
  const rowf z = random_rows(rows, rank, seed);
  const rowf noise = random_rows(rows, d, seed + 1, 0.01);
  Eigen::MatrixXd scaled = z.cast<double>();
  for (index_t c = 0; c < rank; ++c) scaled.col(c) *= double(rank - c) * 2.0;
  return (scaled * a + noise.cast<double>()).cast<float>();
}

aqua::matrix_view<const float> view(const rowf& m) {
  return aqua::view_of(m);
}

/// Independent oracle: the SVD of X (in double) gives V and S directly.
struct svd_oracle {
  Eigen::MatrixXd v;
  Eigen::VectorXd s;
  explicit svd_oracle(const Eigen::MatrixXd& x) {
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(x, Eigen::ComputeThinU | Eigen::ComputeFullV);
    v = svd.matrixV();
    s = Eigen::VectorXd::Zero(x.cols());
    s.head(svd.singularValues().size()) = svd.singularValues();
  }
};

// NaN-safe: Eigen's maxCoeff may skip a NaN; a NaN entry here makes the result NaN.
double max_abs_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  double worst = 0;
  for (Eigen::Index j = 0; j < a.cols(); ++j)
    for (Eigen::Index i = 0; i < a.rows(); ++i)
      worst = aqua_test::max_or_nan(worst, std::abs(a(i, j) - b(i, j)));
  return worst;
}

}  // namespace

TEST_CASE("the calibrated basis and singular values equal an independent SVD of the stacked rows",
          "[calibrate]") {
  const index_t d = 16, rows = 400;
  // Distinct scales per dimension so singular values are well separated.
  rowf x = random_rows(rows, d, 3);
  const auto mix = aqua::head_projection::random_orthogonal(d, 17);
  for (index_t c = 0; c < d; ++c) x.col(c) *= float(1.0 + c);
  x = (x * mix.basis()).eval();

  aqua::calibrator cal(1, 1, 1, d);
  cal.add_queries(0, 0, view(x));
  const auto p = cal.finalize_head(0, 0);
  const svd_oracle ref(x.cast<double>());
  for (index_t j = 0; j < d; ++j) {
    CHECK(p.singular_values()[j] == Approx(ref.s[j]).epsilon(1e-9));
    // Same column up to sign; the calibrator's sign makes the largest-magnitude entry positive.
    Eigen::VectorXd col = p.basis().col(j).cast<double>();
    Eigen::VectorXd want = ref.v.col(j);
    index_t arg;
    want.cwiseAbs().maxCoeff(&arg);
    if (want[arg] < 0) want = -want;
    CHECK(max_abs_diff(col, want) < 1e-5);
  }
  CHECK(p.orthogonality_error() < 1e-5);
}

TEST_CASE("the leading singular vectors recover a planted low-rank subspace", "[calibrate]") {
  const index_t d = 64, rank = 4, rows = 2000;
  const auto frame = aqua::head_projection::random_orthogonal(d, 99);
  const Eigen::MatrixXd a =
      frame.basis().leftCols(rank).transpose().cast<double>();  // rank x d, orthonormal rows
  const rowf x = planted_rows(rows, d, rank, a, 5);
  aqua::calibrator cal(1, 1, 1, d);
  cal.add_queries(0, 0, view(x));
  const auto p = cal.finalize_head(0, 0);
  // Each leading column lies in the planted row space: its projection onto it keeps its norm.
  for (index_t j = 0; j < rank; ++j) {
    const Eigen::VectorXd col = p.basis().col(j).cast<double>();
    CHECK((a * col).norm() == Approx(1.0).margin(1e-3));
  }
  // The rest of the spectrum is the noise floor.
  CHECK(p.singular_values()[rank] < 0.05 * p.singular_values()[rank - 1]);
  // And the leading directions come in the order of the planted scales.
  for (index_t j = 0; j < rank; ++j) {
    const Eigen::VectorXd col = p.basis().col(j).cast<double>();
    CHECK(std::abs(a.row(j).dot(col)) == Approx(1.0).margin(1e-2));
  }
}

TEST_CASE("streaming rows in many batches equals accumulating them in one batch", "[calibrate]") {
  const index_t d = 40, rows = 1000;
  const rowf x = random_rows(rows, d, 21);
  aqua::calibrator one(1, 1, 1, d), many(1, 1, 1, d);
  one.add_queries(0, 0, view(x));
  for (index_t r0 = 0; r0 < rows;) {
    const index_t n = std::min<index_t>(rows - r0, 1 + (r0 * 7) % 37);  // ragged batch sizes, some of one row
    many.add_queries(0, 0, aqua::matrix_view<const float>(x.data() + r0 * d, {n, d}));
    r0 += n;
  }
  CHECK(many.vectors(0, 0) == std::uint64_t(rows));
  const Eigen::MatrixXd g1 = one.gram(0, 0), g2 = many.gram(0, 0);
  CHECK(max_abs_diff(g1, g2) <= 1e-12 * g1.cwiseAbs().maxCoeff());
  const auto p1 = one.finalize_head(0, 0), p2 = many.finalize_head(0, 0);
  CHECK(max_abs_diff(p1.basis().cast<double>(), p2.basis().cast<double>()) < 1e-5);
}

TEST_CASE("the accumulated gram matrix equals X^T X computed with plain loops", "[calibrate]") {
  if (aqua::supported_isa() == aqua::isa::portable)
    WARN("no SIMD gram kernel on this CPU: the SIMD pass runs the portable code again");
  const aqua_test::hook_guard reset;
  for (bool simd : {false, true}) {
    aqua::set_max_isa(simd ? aqua::isa::avx512 : aqua::isa::portable);
    for (index_t d : {1, 5, 13, 128}) {
      const index_t rows = 300;  // not a multiple of the block size
      const rowf x = random_rows(rows, d, std::uint32_t(d));
      aqua::calibrator cal(1, 1, 1, d, {});
      cal.add_queries(0, 0, view(x));
      const Eigen::MatrixXd g = cal.gram(0, 0);
      double worst = 0;
      for (index_t i = 0; i < d; ++i)
        for (index_t j = 0; j < d; ++j) {
          double ref = 0;
          for (index_t r = 0; r < rows; ++r) ref += double(x(r, i)) * double(x(r, j));
          worst = aqua_test::max_or_nan(worst, std::abs(g(i, j) - ref));
        }
      INFO("simd " << simd << " (available " << aqua::detail::gram_simd_available() << "), d " << d);
      CHECK(worst < 1e-9);
    }
  }
}

TEST_CASE("queries of the g query heads of a group accumulate into their KV head", "[calibrate]") {
  // 4 query heads, 2 KV heads: heads 0 and 1 feed KV head 0, heads 2 and 3 feed KV head 1. Query
  // head h only has energy along dimension h, so each KV head's gram has exactly its group's dims.
  const index_t hq = 4, hkv = 2, d = 6, rows = 10;
  std::vector<float> q(static_cast<std::size_t>(hq * rows * d), 0.0f);
  for (index_t h = 0; h < hq; ++h)
    for (index_t r = 0; r < rows; ++r) q[static_cast<std::size_t>((h * rows + r) * d + h)] = float(h + 1);
  aqua::calibrator cal(2, hq, hkv, d);
  REQUIRE(cal.group_size() == 2);
  CHECK(cal.add_queries(1, aqua::make_view<const float>(q.data(), hq, rows, d)));
  for (index_t kv = 0; kv < hkv; ++kv) {
    const Eigen::MatrixXd g = cal.gram(1, kv);
    CHECK(cal.vectors(1, kv) == std::uint64_t(2 * rows));
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j) {
        const bool mine = i == j && i / 2 == kv && i < hq;
        CHECK(g(i, j) == (mine ? double(rows) * (i + 1) * (i + 1) : 0.0));
      }
  }
  CHECK(cal.vectors(0, 0) == 0);
  // One query head at a time lands in the same place.
  aqua::calibrator per_head(2, hq, hkv, d);
  for (index_t h = 0; h < hq; ++h)
    per_head.add_queries(1, h, aqua::make_view<const float>(q.data() + h * rows * d, rows, d));
  for (index_t kv = 0; kv < hkv; ++kv) CHECK(per_head.gram(1, kv) == cal.gram(1, kv));
}

TEST_CASE("the source option decides which vectors are accumulated", "[calibrate]") {
  const index_t d = 4;
  const rowf q = random_rows(5, d, 1), k = random_rows(7, d, 2);
  auto run = [&](aqua::calibration_source s) {
    aqua::calibrator_options opt;
    opt.source = s;
    aqua::calibrator cal(1, 1, 1, d, opt);
    const bool took_q = cal.add_queries(0, 0, view(q));
    const bool took_k = cal.add_keys(0, 0, view(k));
    return std::make_tuple(took_q, took_k, cal.vectors(0, 0), cal.gram(0, 0), cal.finalize().source());
  };
  const Eigen::MatrixXd gq = (q.cast<double>().transpose() * q.cast<double>());
  const Eigen::MatrixXd gk = (k.cast<double>().transpose() * k.cast<double>());
  {
    auto [tq, tk, n, g, src] = run(aqua::calibration_source::queries);
    CHECK((tq && !tk && n == 5 && src == aqua::calibration_source::queries));
    CHECK(max_abs_diff(g, gq) < 1e-9);
  }
  {
    auto [tq, tk, n, g, src] = run(aqua::calibration_source::keys);
    CHECK((!tq && tk && n == 7 && src == aqua::calibration_source::keys));
    CHECK(max_abs_diff(g, gk) < 1e-9);
  }
  {
    auto [tq, tk, n, g, src] = run(aqua::calibration_source::queries_and_keys);
    CHECK((tq && tk && n == 12 && src == aqua::calibration_source::queries_and_keys));
    CHECK(max_abs_diff(g, gq + gk) < 1e-9);
  }
}

TEST_CASE("centering decomposes the scatter about the mean", "[calibrate]") {
  const index_t d = 8, rows = 300;
  rowf x = random_rows(rows, d, 8);
  for (index_t c = 0; c < d; ++c) x.col(c) *= float(1 + c);
  x.rowwise() += Eigen::RowVectorXf::LinSpaced(d, 5.0f, 40.0f);  // a large mean
  aqua::calibrator_options opt;
  opt.center = true;
  aqua::calibrator cal(1, 1, 1, d, opt);
  cal.add_queries(0, 0, view(x));
  const auto set = cal.finalize();
  CHECK(set.centered());
  const auto& p = set.head(0, 0);
  Eigen::MatrixXd xc = x.cast<double>();
  xc.rowwise() -= xc.colwise().mean();
  const svd_oracle ref(xc);
  for (index_t j = 0; j < d; ++j) {
    CHECK(p.singular_values()[j] == Approx(ref.s[j]).epsilon(1e-8));
    CHECK(std::abs(p.basis().col(j).cast<double>().dot(ref.v.col(j))) == Approx(1.0).margin(1e-5));
  }
  // Uncentered, the mean direction dominates instead.
  aqua::calibrator plain(1, 1, 1, d);
  plain.add_queries(0, 0, view(x));
  CHECK(plain.finalize_head(0, 0).singular_values()[0] > 2 * p.singular_values()[0]);
}

TEST_CASE("every column's largest-magnitude entry is positive", "[calibrate]") {
  const index_t d = 12;
  const rowf x = random_rows(100, d, 4);
  aqua::calibrator cal(1, 1, 1, d);
  cal.add_queries(0, 0, view(x));
  const auto p = cal.finalize_head(0, 0);
  for (index_t j = 0; j < d; ++j) {
    index_t arg;
    p.basis().col(j).cwiseAbs().maxCoeff(&arg);
    CHECK(p.basis()(arg, j) > 0);
  }
  // Finalizing twice gives identical bits.
  CHECK(cal.finalize_head(0, 0).basis() == p.basis());
}

TEST_CASE("concurrent adds for different heads and for the same head give the serial result",
          "[calibrate][threads]") {
  const index_t layers = 2, hkv = 3, d = 16, rows = 200, threads = 6;
  std::vector<rowf> data;
  for (index_t t = 0; t < threads; ++t) data.push_back(random_rows(rows, d, std::uint32_t(100 + t)));
  // Threads 0 and 2 share head (0, 0), threads 1 and 3 share head (1, 0), threads 4 and 5 have
  // heads of their own: both kinds of concurrency, with batches interleaved.
  auto target = [&](index_t t) { return std::make_pair(t % layers, (t / 4) % hkv); };
  aqua::calibrator_options opt;
  opt.source = aqua::calibration_source::keys;
  aqua::calibrator serial(layers, hkv, hkv, d, opt), parallel(layers, hkv, hkv, d, opt);
  for (index_t t = 0; t < threads; ++t)
    REQUIRE(serial.add_keys(target(t).first, target(t).second, view(data[std::size_t(t)])));
  std::atomic<int> callbacks{0};
  opt.progress = [&](const aqua::calibration_progress&) { ++callbacks; };
  aqua::calibrator with_progress(layers, hkv, hkv, d, opt);
  std::vector<std::thread> pool;
  for (index_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (index_t r0 = 0; r0 < rows; r0 += 10) {
        const auto v = aqua::matrix_view<const float>(data[std::size_t(t)].data() + r0 * d, {10, d});
        parallel.add_keys(target(t).first, target(t).second, v);
        with_progress.add_keys(target(t).first, target(t).second, v);
      }
    });
  for (auto& th : pool) th.join();
  CHECK(callbacks.load() == int(threads * rows / 10));
  CHECK(parallel.vectors_seen() == std::uint64_t(threads * rows));
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < hkv; ++h) {
      CHECK(parallel.vectors(l, h) == serial.vectors(l, h));
      CHECK(parallel.vectors(l, h) == std::uint64_t(h == 0 ? 2 * rows : h == 1 ? rows : 0));
      const Eigen::MatrixXd a = serial.gram(l, h), b = parallel.gram(l, h);
      CHECK(max_abs_diff(a, b) <= 1e-12 * std::max(1.0, a.cwiseAbs().maxCoeff()));
      CHECK(max_abs_diff(with_progress.gram(l, h), b) <= 1e-12 * std::max(1.0, a.cwiseAbs().maxCoeff()));
    }
}

TEST_CASE("finalize with several threads equals finalize with one", "[calibrate][threads]") {
  const index_t layers = 3, hq = 4, hkv = 2, d = 8, rows = 50;
  aqua::calibrator cal(layers, hq, hkv, d);
  for (index_t l = 0; l < layers; ++l) {
    std::vector<float> q(static_cast<std::size_t>(hq * rows * d));
    aqua_test::fill_normal(q, std::uint32_t(l));
    cal.add_queries(l, aqua::make_view<const float>(q.data(), hq, rows, d));
  }
  const auto a = cal.finalize(1), b = cal.finalize(3);
  CHECK(a.group_size() == 2);
  CHECK(a.vectors_seen() == std::uint64_t(layers * hq * rows));
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < hkv; ++h) CHECK(a.head(l, h).basis() == b.head(l, h).basis());
}

TEST_CASE("the progress callback reports accumulation and every finalized head", "[calibrate]") {
  std::vector<aqua::calibration_progress> seen;
  aqua::calibrator_options opt;
  opt.progress = [&](const aqua::calibration_progress& p) { seen.push_back(p); };
  aqua::calibrator cal(2, 2, 1, 4, opt);
  std::vector<float> q(2 * 3 * 4, 1.0f);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = float(i % 5) - 2.0f;
  cal.add_queries(0, aqua::make_view<const float>(q.data(), 2, 3, 4));
  cal.add_queries(1, 1, aqua::make_view<const float>(q.data(), 3, 4));
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].stage == aqua::calibration_progress::stage_t::accumulate);
  CHECK(seen[0].kv_head == -1);
  CHECK(seen[0].vectors == 6);
  CHECK(seen[1].layer == 1);
  CHECK(seen[1].kv_head == 0);
  CHECK(seen[1].total_vectors == 9);
  cal.finalize();
  REQUIRE(seen.size() == 4);
  CHECK(seen[3].stage == aqua::calibration_progress::stage_t::finalize);
  CHECK(seen[3].heads_done == 2);
  CHECK(seen[3].heads_total == 2);
}

TEST_CASE("merging shard calibrators equals calibrating everything in one", "[calibrate]") {
  const index_t d = 10;
  const rowf a = random_rows(60, d, 1), b = random_rows(90, d, 2);
  aqua::calibrator all(1, 1, 1, d), s1(1, 1, 1, d), s2(1, 1, 1, d);
  all.add_queries(0, 0, view(a));
  all.add_queries(0, 0, view(b));
  s1.add_queries(0, 0, view(a));
  s2.add_queries(0, 0, view(b));
  s1.merge(s2);
  CHECK(s1.vectors_seen() == 150);
  CHECK(max_abs_diff(s1.gram(0, 0), all.gram(0, 0)) < 1e-9);
  aqua::calibrator other_d(1, 1, 1, d + 1);
  CHECK_THROWS_WITH(s1.merge(other_d), Contains("shapes differ"));
  s1.reset();
  CHECK(s1.vectors_seen() == 0);
  CHECK(s1.vectors(0, 0) == 0);
}

TEST_CASE("the calibrator rejects bad shapes, non-finite vectors and empty heads with clear messages",
          "[calibrate]") {
  CHECK_THROWS_WITH(aqua::calibrator(1, 3, 2, 8),
                    Contains("query_heads (3) must be a positive multiple of kv_heads (2)"));
  CHECK_THROWS_WITH(aqua::calibrator(0, 1, 1, 8), Contains("layers must be at least 1"));
  CHECK_THROWS_WITH(aqua::calibrator(1, 1, 1, 65537), Contains("d must be in [1, 65536], got 65537"));
  // 2^20 x 8 heads of a 128 x 128 Gram matrix (about 128 KiB each) are 2^40 bytes: within the
  // limit; 2^30 x 8 heads are not, and nothing is allocated before the check.
  CHECK_THROWS_WITH(
      aqua::calibrator(index_t{1} << 30, 8, 8, 128),
      Contains("1073741824 layers x 8 KV heads of 132096 bytes (d = 128) exceed the limit of 2^46"));
  CHECK_THROWS_WITH(aqua::calibrator(index_t{1} << 41, 1, 1, 8), Contains("is too large"));
  aqua::calibrator cal(2, 4, 2, 8);
  std::vector<float> q(4 * 3 * 8, 0.5f);
  CHECK_THROWS_WITH(cal.add_queries(0, aqua::make_view<const float>(q.data(), 2, 6, 8)),
                    Contains("q has shape [2, 6, 8] but must be [4 (query heads), rows, 8]"));
  CHECK_THROWS_WITH(cal.add_queries(2, aqua::make_view<const float>(q.data(), 4, 3, 8)),
                    Contains("layer 2 is outside [0, 2)"));
  CHECK_THROWS_WITH(cal.add_queries(0, 4, aqua::make_view<const float>(q.data(), 3, 8)),
                    Contains("query head 4 is outside [0, 4)"));
  CHECK_THROWS_WITH(cal.add_keys(0, 0, aqua::make_view<const float>(q.data(), 3, 7)),
                    Contains("k has shape [3, 7]"));
  q[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(cal.add_queries(0, aqua::make_view<const float>(q.data(), 4, 3, 8)),
                    Contains("non-finite value"));
  CHECK(cal.vectors_seen() == 0);  // nothing was accumulated by the failed call
  q[5] = 0.5f;
  cal.add_queries(0, aqua::make_view<const float>(q.data(), 4, 3, 8));
  CHECK_THROWS_WITH(cal.finalize(), Contains("layer 1 KV head 0 has received no vectors"));
}

// ------------------------------------------------------------------------------------------------
// Retention analysis

namespace {

/// Independent retention oracle for one query head: plain loops, no aqua code except the basis.
struct retention_oracle {
  std::vector<double> topk, prefix, err;
  retention_oracle(const rowf& q, const rowf& k, const rowf& p) {
    const index_t d = p.rows();
    topk.assign(std::size_t(d), 0.0);
    prefix.assign(std::size_t(d), 0.0);
    err.assign(std::size_t(d), 0.0);
    for (index_t r = 0; r < q.rows(); ++r) {
      std::vector<double> qt(std::size_t(d), 0.0);
      for (index_t j = 0; j < d; ++j)
        for (index_t i = 0; i < d; ++i) qt[std::size_t(j)] += double(q(r, i)) * p(i, j);
      double total = 0;
      for (double v : qt) total += v * v;
      std::vector<double> energies;
      for (double v : qt) energies.push_back(v * v);
      std::sort(energies.begin(), energies.end(), std::greater<double>());
      // Kept set for each k: the k largest |q~|.
      std::vector<index_t> order(static_cast<std::size_t>(d));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
        return std::abs(qt[std::size_t(a)]) > std::abs(qt[std::size_t(b)]);
      });
      std::vector<double> exact(std::size_t(k.rows()), 0.0);
      double ref = 0;
      for (index_t n = 0; n < k.rows(); ++n) {
        for (index_t i = 0; i < d; ++i) exact[std::size_t(n)] += double(q(r, i)) * k(n, i);
        ref += exact[std::size_t(n)] * exact[std::size_t(n)];
      }
      for (index_t kk = 1; kk <= d; ++kk) {
        double top = 0, pre = 0;
        for (index_t i = 0; i < kk; ++i) {
          top += energies[std::size_t(i)];
          pre += qt[std::size_t(i)] * qt[std::size_t(i)];
        }
        topk[std::size_t(kk - 1)] += top / total / double(q.rows());
        prefix[std::size_t(kk - 1)] += pre / total / double(q.rows());
        double diff = 0;
        for (index_t n = 0; n < k.rows(); ++n) {
          double approx = 0;
          for (index_t i = 0; i < kk; ++i) {
            const index_t dim = order[std::size_t(i)];
            double kt = 0;
            for (index_t c = 0; c < d; ++c) kt += double(k(n, c)) * p(c, dim);
            approx += qt[std::size_t(dim)] * kt;
          }
          diff += (approx - exact[std::size_t(n)]) * (approx - exact[std::size_t(n)]);
        }
        err[std::size_t(kk - 1)] += std::sqrt(diff / ref) / double(q.rows());
      }
    }
  }
};

}  // namespace

TEST_CASE("retention figures equal an independent oracle written with plain loops",
          "[calibrate][retention]") {
  const index_t d = 6, nq = 7, nk = 9;
  auto set = aqua::projection_set::random_orthogonal(1, 1, d, 1, 4);
  const rowf q = random_rows(nq, d, 1), k = random_rows(nk, d, 2);
  aqua::retention_evaluator ev(set);
  ev.add_layer(0, aqua::make_view<const float>(q.data(), 1, nq, d),
               aqua::make_view<const float>(k.data(), 1, nk, d));
  const auto c = ev.head(0, 0);
  const retention_oracle ref(q, k, set.head(0, 0).basis());
  CHECK(c.queries == std::uint64_t(nq));
  CHECK(c.keys == std::uint64_t(nk));
  for (index_t kk = 1; kk <= d; ++kk) {
    CHECK(c.topk_at(kk) == Approx(ref.topk[std::size_t(kk - 1)]).margin(1e-6));
    CHECK(c.prefix_at(kk) == Approx(ref.prefix[std::size_t(kk - 1)]).margin(1e-6));
    CHECK(c.score_rel_err_at(kk) == Approx(ref.err[std::size_t(kk - 1)]).margin(1e-6));
  }
}

TEST_CASE("retention is 1 at k = d, never decreases with k, and top-k is at least the prefix",
          "[calibrate][retention]") {
  const index_t layers = 2, hq = 4, hkv = 2, d = 32, rows = 40;
  const auto set = aqua::projection_set::random_orthogonal(layers, hkv, d, hq / hkv, 8);
  aqua::retention_evaluator ev(set);
  for (index_t l = 0; l < layers; ++l) {
    std::vector<float> q(static_cast<std::size_t>(hq * rows * d)),
        k(static_cast<std::size_t>(hkv * rows * d));
    aqua_test::fill_normal(q, std::uint32_t(10 + l));
    aqua_test::fill_normal(k, std::uint32_t(20 + l));
    ev.add_layer(l, aqua::make_view<const float>(q.data(), hq, rows, d),
                 aqua::make_view<const float>(k.data(), hkv, rows, d));
  }
  std::vector<aqua::retention_curve> curves = {ev.overall(), ev.layer(0), ev.layer(1), ev.head(1, 1),
                                               ev.query_head(0, 3)};
  for (const auto& c : curves) {
    REQUIRE(c.topk.size() == std::size_t(d));
    CHECK(c.topk.back() == 1.0);
    CHECK(c.prefix.back() == 1.0);
    CHECK(c.score_rel_err.back() < 1e-5);
    for (index_t kk = 2; kk <= d; ++kk) {
      CHECK(c.topk_at(kk) >= c.topk_at(kk - 1));
      CHECK(c.prefix_at(kk) >= c.prefix_at(kk - 1));
    }
    for (index_t kk = 1; kk <= d; ++kk) CHECK(c.topk_at(kk) >= c.prefix_at(kk) - 1e-12);
  }
  CHECK(ev.overall().queries == std::uint64_t(layers * hq * rows));
  CHECK(ev.head(1, 1).queries == std::uint64_t(2 * rows));
}

TEST_CASE("a calibrated projection keeps more held-out energy in its leading dimensions than the identity",
          "[calibrate][retention]") {
  const index_t d = 32, rank = 3;
  const auto frame = aqua::head_projection::random_orthogonal(d, 5);
  const Eigen::MatrixXd a = frame.basis().leftCols(rank).transpose().cast<double>();
  const rowf train = planted_rows(1000, d, rank, a, 1), held_q = planted_rows(100, d, rank, a, 2),
             held_k = planted_rows(100, d, rank, a, 3);
  aqua::calibrator cal(1, 1, 1, d);
  cal.add_queries(0, 0, view(train));
  const auto calibrated = cal.finalize();
  auto eval = [&](const aqua::projection_set& s) {
    aqua::retention_evaluator ev(s);
    ev.add_layer(0, aqua::make_view<const float>(held_q.data(), 1, 100, d),
                 aqua::make_view<const float>(held_k.data(), 1, 100, d));
    return ev.overall();
  };
  const auto good = eval(calibrated), plain = eval(aqua::projection_set::identity(1, 1, d));
  CHECK(good.prefix_at(rank) > 0.99);
  CHECK(plain.prefix_at(rank) < 0.5);
  CHECK(good.score_rel_err_at(rank) < 0.05);
}

TEST_CASE("retention results do not depend on the thread count, and sampling caps the work",
          "[calibrate][retention][threads]") {
  const index_t hq = 4, hkv = 1, d = 16, rows = 30;
  const auto set = aqua::projection_set::random_orthogonal(1, hkv, d, hq, 2);
  std::vector<float> q(static_cast<std::size_t>(hq * rows * d)), k(static_cast<std::size_t>(hkv * rows * d));
  aqua_test::fill_normal(q, 1);
  aqua_test::fill_normal(k, 2);
  auto run = [&](int threads, index_t cap) {
    aqua::retention_options opt;
    opt.threads = threads;
    opt.max_queries = cap;
    opt.max_keys = cap;
    aqua::retention_evaluator ev(set, opt);
    ev.add_layer(0, aqua::make_view<const float>(q.data(), hq, rows, d),
                 aqua::make_view<const float>(k.data(), hkv, rows, d));
    return ev.overall();
  };
  const auto a = run(1, 0), b = run(3, 0), c = run(1, 10);
  CHECK(a.topk == b.topk);
  CHECK(a.score_rel_err == b.score_rel_err);
  CHECK(c.queries == std::uint64_t(hq * 10));
  CHECK(c.keys == std::uint64_t(hq * 10));
}

TEST_CASE("the retention evaluator checks shapes against the projection set", "[calibrate][retention]") {
  const auto set = aqua::projection_set::identity(2, 2, 4, 2);
  aqua::retention_evaluator ev(set);
  std::vector<float> buf(64, 1.0f);
  CHECK_THROWS_WITH(
      ev.add_layer(0, aqua::make_view<const float>(buf.data(), 2, 2, 4),
                   aqua::make_view<const float>(buf.data(), 2, 2, 4)),
      Contains("q has shape [2, 2, 4] but the projection set needs [4 (query heads), rows, 4]"));
  CHECK_THROWS_WITH(ev.add_layer(0, aqua::make_view<const float>(buf.data(), 4, 2, 4),
                                 aqua::make_view<const float>(buf.data(), 2, 2, 3)),
                    Contains("k has shape [2, 2, 3]"));
  CHECK_THROWS_WITH(ev.add_layer(5, aqua::make_view<const float>(buf.data(), 4, 2, 4),
                                 aqua::make_view<const float>(buf.data(), 2, 2, 4)),
                    Contains("layer 5 is outside [0, 2)"));
}

TEST_CASE("strided float views and double views accumulate like contiguous float rows", "[calibrate]") {
  const index_t d = 9, rows = 70;
  const rowf x = random_rows(rows, d, 31);
  // Interleave every element with a sentinel so the column stride is 2.
  std::vector<float> strided(static_cast<std::size_t>(rows * d * 2), std::numeric_limits<float>::quiet_NaN());
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < d; ++c) strided[static_cast<std::size_t>(r * 2 * d + 2 * c)] = x(r, c);
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> xd = x.cast<double>();
  const aqua_test::hook_guard reset;
  for (bool simd : {false, true}) {
    aqua::set_max_isa(simd ? aqua::isa::avx512 : aqua::isa::portable);
    aqua::calibrator a(1, 1, 1, d, {}), b(1, 1, 1, d, {}), c(1, 1, 1, d, {});
    a.add_queries(0, 0, view(x));
    b.add_queries(0, 0, aqua::matrix_view<const float>(strided.data(), {rows, d}, {2 * d, 2}));
    c.add_queries(0, 0, aqua::view_of(xd));
    CHECK(max_abs_diff(a.gram(0, 0), b.gram(0, 0)) < 1e-12);
    CHECK(max_abs_diff(a.gram(0, 0), c.gram(0, 0)) < 1e-12);
  }
}
