// .npy reader: any bytes give a valid array or aqua::error, nothing else.
#include <aqua/io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    aqua::npy_array a = aqua::read_npy(data, size);
    // A valid array is self-consistent: its shape holds exactly its elements, and the extents
    // other than zero multiply without overflow in any order (the reader promises it, so that
    // views of empty arrays have representable strides).
    aqua::index_t n = 1, span = 1;
    for (aqua::index_t e : a.shape()) {
      if (e < 0) std::abort();
      if (__builtin_mul_overflow(span, e == 0 ? 1 : e, &span)) std::abort();
      n *= e;
    }
    if (n != a.size()) std::abort();
    a.convert_to_float();
    if (static_cast<aqua::index_t>(a.float_data().size()) != n) std::abort();
    {
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
