#include <aqua/eigen.hpp>
#include <aqua/tensor_view.hpp>

#include <catch2/catch.hpp>

#include <limits>
#include <vector>

using Catch::Matchers::Contains;

TEST_CASE("a contiguous view computes row-major strides and indexes like the buffer", "[tensor_view]") {
  std::vector<int> data(24);
  for (int i = 0; i < 24; ++i) data[std::size_t(i)] = i;
  auto v = aqua::make_view(data.data(), 2, 3, 4);
  CHECK(v.stride(0) == 12);
  CHECK(v.stride(1) == 4);
  CHECK(v.stride(2) == 1);
  CHECK(v.size() == 24);
  CHECK(v.is_contiguous());
  CHECK(v(1, 2, 3) == 23);
  CHECK(v[1](0, 1) == 13);
}

TEST_CASE("a strided view addresses elements through its element strides", "[tensor_view]") {
  std::vector<float> data(30);
  for (int i = 0; i < 30; ++i) data[std::size_t(i)] = float(i);
  // Every other column of a 3 x 10 buffer.
  aqua::matrix_view<float> v(data.data(), {3, 5}, {10, 2});
  CHECK_FALSE(v.is_contiguous());
  CHECK(v(2, 4) == 28.0f);
  v(0, 1) = -1.0f;
  CHECK(data[2] == -1.0f);
}

TEST_CASE("a mutable view converts to a const view but not the reverse", "[tensor_view]") {
  std::vector<double> data(6, 1.0);
  aqua::matrix_view<double> mutable_view = aqua::make_view(data.data(), 2, 3);
  aqua::matrix_view<const double> const_view = mutable_view;
  CHECK(const_view.data() == data.data());
  STATIC_REQUIRE(std::is_convertible<aqua::matrix_view<double>, aqua::matrix_view<const double>>::value);
  STATIC_REQUIRE_FALSE(
      std::is_convertible<aqua::matrix_view<const double>, aqua::matrix_view<double>>::value);
}

TEST_CASE("views of Eigen matrices, maps and blocks alias the Eigen storage", "[tensor_view][eigen]") {
  Eigen::MatrixXf col_major(4, 3);
  col_major.setRandom();
  auto vc = aqua::view_of(col_major);
  CHECK(vc.extent(0) == 4);
  CHECK(vc.extent(1) == 3);
  CHECK(vc(2, 1) == col_major(2, 1));

  aqua::row_matrix<double> row_major(3, 5);
  row_major.setRandom();
  const auto& crow = row_major;
  auto vr = aqua::view_of(crow);
  STATIC_REQUIRE(std::is_const<std::remove_pointer_t<decltype(vr.data())>>::value);
  CHECK(vr(1, 4) == row_major(1, 4));

  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> block(col_major.data() + 1, 2, 3,
                                                             Eigen::OuterStride<>(4));
  auto vb = aqua::view_of(block);
  CHECK(vb(1, 2) == col_major(2, 2));
  vb(0, 0) = 9.0f;
  CHECK(col_major(1, 0) == 9.0f);

  auto back = aqua::as_eigen(vr);
  CHECK(back.isApprox(row_major));
}

TEST_CASE("a negative extent is rejected", "[tensor_view][errors]") {
  float x = 0;
  CHECK_THROWS_WITH((aqua::matrix_view<float>(&x, {2, -1})), Contains("extent 1 is negative (-1)"));
}

TEST_CASE("extents whose product overflows are rejected even when another extent is zero",
          "[tensor_view][errors]") {
  float x = 0;
  const aqua::index_t huge = 1500000000000000000;  // 7 x huge > 2^63 - 1
  CHECK_THROWS_WITH(
      (aqua::tensor3_view<float>(&x, {0, 7, huge})),
      Contains("extent 2 (1500000000000000000) takes the product of the extents past 2^63 - 1"));
  CHECK_THROWS_WITH((aqua::tensor3_view<float>(&x, {0, 7, huge}, {0, 0, 0})), Contains("past 2^63 - 1"));
  CHECK_THROWS_WITH((aqua::matrix_view<float>(&x, {huge, 7})), Contains("extent 1 (7)"));
  // The largest product that fits is accepted; its strides and size are exact.
  const aqua::tensor3_view<float> empty(&x, {0, aqua::index_t{1} << 31, aqua::index_t{1} << 31});
  CHECK(empty.size() == 0);
  CHECK(empty.stride(0) == aqua::index_t{1} << 62);
  const aqua::matrix_view<float> broadcast(&x, {std::numeric_limits<aqua::index_t>::max(), 1}, {0, 0});
  CHECK(broadcast.size() == std::numeric_limits<aqua::index_t>::max());
}
