// .npy reader: any bytes give a valid array or aqua::error, nothing else.
#include <aqua/io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    aqua::npy_array a = aqua::read_npy(data, size);
    // A valid array is self-consistent: its shape holds exactly its elements.
    aqua::index_t n = 1;
    for (aqua::index_t e : a.shape()) n *= e;
    if (n != a.size()) std::abort();
    a.convert_to_float();
    if (static_cast<aqua::index_t>(a.float_data().size()) != n) std::abort();
  } catch (const aqua::error&) {
  }
  return 0;
}
