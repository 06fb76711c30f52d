// llama2.c tokenizer loader (and the encoder/decoder on what it loads): any bytes give a valid
// tokenizer or aqua::error. The first byte picks the model's vocab_size, the rest is the file.
#include <llama2c/tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const int vocab_size = data[0];  // 0..2 exercise the argument check
  try {
    const llama2c::tokenizer t = llama2c::tokenizer::load(data + 1, size - 1, vocab_size);
    if (t.vocab_size() != vocab_size) std::abort();
    try {
      const std::vector<int> ids =
          t.encode("Once upon a time, \xc3\xa9t\xc3\xa9 \xf0\x9f\x99\x82!", true, true);
      for (int id : ids)
        if (id < 0 || id >= vocab_size) std::abort();
      (void)t.decode_all(ids);
    } catch (const aqua::error&) {
    }
  } catch (const aqua::error&) {
  }
  return 0;
}
