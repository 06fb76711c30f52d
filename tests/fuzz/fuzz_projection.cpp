// safetensors projection loader: any bytes give a valid projection set or aqua::error.
#include <aqua/io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const aqua::projection_set set = aqua::load_projection_set(data, size);
    if (set.empty() || set.layers() < 1 || set.kv_heads() < 1 || set.d() < 1) std::abort();
    for (aqua::index_t l = 0; l < set.layers(); ++l)
      for (aqua::index_t h = 0; h < set.kv_heads(); ++h)
        if (set.head(l, h).basis().rows() != set.d()) std::abort();
  } catch (const aqua::error&) {
  }
  return 0;
}
