// llama2.c checkpoint loader (in-memory overload, the same parser as the file one): any bytes give
// a valid checkpoint or aqua::error.
#include <llama2c/checkpoint.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const llama2c::checkpoint ck = llama2c::checkpoint::load(data, size);
    const llama2c::config& c = ck.cfg();
    if (llama2c::checkpoint::expected_file_size(c) != size) std::abort();
    // Touch the last element of every tensor: the accessors must stay inside the buffer.
    const int L = c.n_layers - 1;
    volatile float sink = 0;
    sink = sink + ck.token_embedding()[static_cast<std::size_t>(c.vocab_size) * c.dim - 1];
    sink = sink + ck.rms_att(L)[c.dim - 1] + ck.wq(L)[static_cast<std::size_t>(c.dim) * c.dim - 1];
    sink = sink + ck.wk(L)[static_cast<std::size_t>(c.kv_dim()) * c.dim - 1];
    sink = sink + ck.wv(L)[static_cast<std::size_t>(c.kv_dim()) * c.dim - 1];
    sink = sink + ck.wo(L)[static_cast<std::size_t>(c.dim) * c.dim - 1] + ck.rms_ffn(L)[c.dim - 1];
    sink = sink + ck.w1(L)[static_cast<std::size_t>(c.hidden_dim) * c.dim - 1];
    sink = sink + ck.w2(L)[static_cast<std::size_t>(c.hidden_dim) * c.dim - 1];
    sink = sink + ck.w3(L)[static_cast<std::size_t>(c.hidden_dim) * c.dim - 1];
    sink = sink + ck.rms_final()[c.dim - 1] +
           ck.classifier()[static_cast<std::size_t>(c.vocab_size) * c.dim - 1];
    if (!std::isfinite(sink)) { /* finite weights may still sum to inf: not an error */
    }
  } catch (const aqua::error&) {
  }
  return 0;
}
