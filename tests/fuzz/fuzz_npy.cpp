// .npy reader: any bytes give a valid array or aqua::error, nothing else.
#include <aqua/io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    aqua::npy_array a = aqua::read_npy(data, size);
    // A valid array is self-consistent: its shape holds exactly its elements. The product is
    // checked: an empty array may have other extents whose product exceeds 64 bits (a finding of
    // this target: corpus/npy/finding_empty_shape_product_overflow).
    aqua::index_t n = 1;
    bool zero = false, fits = true;
    for (aqua::index_t e : a.shape()) {
      if (e < 0) std::abort();
      zero = zero || e == 0;
      if (fits && __builtin_mul_overflow(n, e, &n)) fits = false;
    }
    if (zero) n = 0;
    if (!fits && !zero) std::abort();  // a non-empty array must hold its product of extents
    if (n != a.size()) std::abort();
    a.convert_to_float();
    if (static_cast<aqua::index_t>(a.float_data().size()) != n) std::abort();
    // Views over what was read, where the contiguous strides fit an index_t: aqua::tensor_view
    // multiplies the extents from the last one down, so an empty array whose trailing extents
    // overflow (shape [0, 7, 1.5e18]) is left out: a library issue, tests/fuzz/README.md.
    bool strides_fit = true;
    aqua::index_t suffix = 1;
    for (std::size_t i = a.shape().size(); i-- > 0 && strides_fit;)
      strides_fit = !__builtin_mul_overflow(suffix, a.shape()[i], &suffix);
    if (strides_fit) {
      volatile float sink = 0;
      switch (a.rank()) {
        case 1: {
          const auto v = a.float_view<1>();
          if (n > 0) sink = sink + v(v.extent(0) - 1);
          break;
        }
        case 2: {
          const auto v = a.float_view<2>();
          if (n > 0) sink = sink + v(v.extent(0) - 1, v.extent(1) - 1);
          break;
        }
        case 3: {
          const auto v = a.float_view<3>();
          if (n > 0) sink = sink + v(v.extent(0) - 1, v.extent(1) - 1, v.extent(2) - 1);
          break;
        }
        default:
          break;
      }
    }
  } catch (const aqua::error&) {
  }
  return 0;
}
