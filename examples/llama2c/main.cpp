// aqua_llama: a small inference engine for llama2.c checkpoints whose attention runs in aqua.
//
// aqua_llama --help lists every flag. Outline:
//   aqua_llama [--model FILE] [--tokenizer FILE] [--data-dir DIR] [--threads T] [--json]
//              [--prompt TEXT] [--steps N]                                   greedy generation
//              --ppl TEXT_FILE [--lines A-B] [--max-tokens N] [--windows W] [--block B]
//                    [--dump-qk DIR]                                         perplexity
//              [--projection FILE.safetensors | --identity] (--k K | --energy TAU)
//                    [--select per-head|group|tile] [--tile T] [--r R]         AQUA attention
//                    [--h2o-budget B [--h2o-recent W]]                         H2O eviction
//
// Without --projection/--identity attention is exact (aqua::dense_prefill / dense_decode); with
// one of them it is AQUA over a projected KV cache (aqua_attention.hpp), each query keeping K
// projected dims (or the fewest reaching energy fraction TAU) out of the first R. --h2o-budget
// adds H2O eviction (token by token): after every decode step each KV head keeps B tokens, the W
// most recent and the B - W older ones with the largest accumulated AQUA attention.
//
// Without --model/--tokenizer it loads stories260K from the data directory: --data-dir, else
// $AQUA_DATA_DIR, else ../shared/data from the current directory or from the repository root.
// A relative --ppl path that does not exist is looked up in the data directory too, so
// `--ppl text/en_pud.txt` works from anywhere.
#include <algorithm>
#include <aqua/io.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>

#include "aqua_attention.hpp"
#include "llama2c.hpp"
#include "llama_cli.hpp"
#include "qk_dump.hpp"

#ifndef AQUA_LLAMA2C_REPO_ROOT
#define AQUA_LLAMA2C_REPO_ROOT ""
#endif

namespace {

using aqua_llama_cli::options;

/// Dense attention, or AQUA over projected caches built from the projection file (or identity).
std::unique_ptr<llama2c::attention_backend> make_attention(const options& o, const llama2c::config& c) {
  if (!o.aqua()) return std::make_unique<llama2c::dense_attention>(o.threads);
  const aqua::projection_set projections =
      o.identity
          ? aqua::projection_set::identity(c.n_layers, c.n_kv_heads, c.head_dim(), c.n_heads / c.n_kv_heads)
          : aqua::load_projection_set(o.projection);
  AQUA_CHECK(projections.layers() == c.n_layers && projections.kv_heads() == c.n_kv_heads &&
                 projections.d() == c.head_dim(),
             "the projection file '", o.projection, "' holds ", projections.layers(), " layers x ",
             projections.kv_heads(), " KV heads of d = ", projections.d(), " but the model has ", c.n_layers,
             " x ", c.n_kv_heads, " of d = ", c.head_dim());
  llama2c::aqua_attention_options a;
  a.select = o.energy > 0 ? aqua::selection_spec::energy(o.energy) : aqua::selection_spec::top_k(o.k);
  a.mode = o.select == "group"  ? aqua::selection_mode::group
           : o.select == "tile" ? aqua::selection_mode::tile
                                : aqua::selection_mode::per_head;
  a.rank = o.r;
  a.tile_dims = o.tile;
  a.threads = o.threads;
  a.h2o_budget = o.h2o_budget;
  a.h2o_recent = o.h2o_budget > 0 ? o.h2o_recent : 0;
  return std::make_unique<llama2c::aqua_attention>(projections, a);
}

/// Mean dims kept per query: k, or the measured mean under energy selection.
double mean_k(const options& o, const llama2c::attention_backend& attention) {
  if (!o.aqua()) return 0;
  if (o.energy > 0) return static_cast<const llama2c::aqua_attention&>(attention).mean_selected();
  return o.k;
}

std::string selection_text(const options& o, const llama2c::attention_backend& attention) {
  char buf[96];
  if (o.energy > 0)
    std::snprintf(buf, sizeof buf, "energy %.4g (mean k %.3f)", o.energy, mean_k(o, attention));
  else
    std::snprintf(buf, sizeof buf, "k = %d", o.k);
  return buf;
}

int run(const options& o) {
  const aqua_llama_cli::input_files inputs(o.data_dir, AQUA_LLAMA2C_REPO_ROOT);
  const std::string model_path = inputs.model(o.model);
  // Every flag is checked before anything is loaded: those that depend on the model against its
  // header, the text file (which may live in the data directory) for being readable.
  aqua_llama_cli::check_against_model(o, llama2c::checkpoint::read_config(model_path));
  const std::string text_path = o.generate ? "" : inputs.text(o.ppl);
  const llama2c::checkpoint model = llama2c::checkpoint::load(model_path);
  const llama2c::tokenizer tok =
      llama2c::tokenizer::load(inputs.tokenizer(o.tokenizer), model.cfg().vocab_size);
  const auto& c = model.cfg();
  std::unique_ptr<llama2c::attention_backend> attention = make_attention(o, c);
  llama2c::transformer engine(model, *attention);
  std::fprintf(stderr,
               "model %s: dim %d, hidden %d, layers %d, heads %d/%d (head dim %d), vocab %d, context %d\n",
               model.path().c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(),
               c.vocab_size, c.seq_len);

  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };

  if (o.generate) {
    // As in run.c, 0 steps (or more than the context) means the whole context.
    const int steps = o.steps == 0 ? c.seq_len : o.steps;
    const llama2c::generation g = llama2c::generate_greedy(engine, tok, o.prompt, steps);
    const double s = seconds();
    std::printf("%s\n", g.text.c_str());
    std::fprintf(stderr, "%zu tokens in %.3f s (%.0f tok/s), attention %s\n", g.tokens.size(), s,
                 static_cast<double>(g.tokens.size()) / s, attention->name());
    if (o.json)
      std::printf("{\"mode\": \"generate\", \"attention\": \"%s\", \"tokens\": %zu, \"text\": %s}\n",
                  attention->name(), g.tokens.size(), llama2c::json_string(g.text).c_str());
    return 0;
  }

  const std::string text = llama2c::read_text(text_path, o.first_line, o.last_line);
  const auto windows = llama2c::perplexity_windows(tok, text, std::min(o.max_tokens, c.seq_len), o.windows);

  llama2c::qk_dump dump(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim());
  if (!o.dump_qk.empty())
    engine.set_qk_observer([&](int layer, aqua::index_t, aqua::tensor3_view<const float> q,
                               aqua::tensor3_view<const float> k) { dump.add(layer, q, k); });
  // Group-shared selection exists in decode only, so it is measured token by token.
  // H2O evicts after every decode step: token by token too.
  const int block = o.block > 0 ? o.block : (o.select == "group" || o.h2o_budget > 0) ? 1 : 0;
  const llama2c::perplexity_result r = llama2c::perplexity(engine, windows, block);
  const double s = seconds();
  llama2c::print_perplexity(r, windows.size(), attention->name(), text_path, o.lines, s);
  if (o.aqua())
    std::printf("aqua: %s, %s selection, %s, r = %d%s\n",
                o.identity ? "identity bases" : o.projection.c_str(), o.select.c_str(),
                selection_text(o, *attention).c_str(), o.r == 0 ? c.head_dim() : o.r,
                block == 1 ? ", token by token" : "");
  if (o.h2o_budget > 0)
    std::printf(
        "h2o: budget %d tokens per KV head (%d recent), %.0f tokens evicted per KV head over all layers\n",
        o.h2o_budget, o.h2o_recent, static_cast<const llama2c::aqua_attention&>(*attention).evicted_tokens());
  if (!o.dump_qk.empty()) {
    std::filesystem::create_directories(o.dump_qk);
    const aqua::index_t rows = dump.write(o.dump_qk);
    std::fprintf(stderr,
                 "wrote q_layer*.npy [%d, %lld, %d] and k_layer*.npy [%d, %lld, %d] for %d layers to %s\n",
                 c.n_heads, static_cast<long long>(rows), c.head_dim(), c.n_kv_heads,
                 static_cast<long long>(rows), c.head_dim(), c.n_layers, o.dump_qk.c_str());
  }
  if (o.json)
    std::printf(
        "{\"mode\": \"perplexity\", \"attention\": \"%s\", \"perplexity\": %.6f, \"mean_nll\": %.8f, "
        "\"tokens\": %d, \"predicted\": %d, \"windows\": %zu, \"text_file\": %s, \"lines\": %s, "
        "\"k\": %d, \"energy\": %g, \"mean_k\": %.4f, \"select\": \"%s\", \"r\": %d, \"block\": %d, "
        "\"h2o_budget\": %d, \"h2o_recent\": %d}\n",
        attention->name(), r.perplexity, r.mean_nll, r.tokens, r.predicted, windows.size(),
        llama2c::json_string(text_path).c_str(), llama2c::json_string(o.lines).c_str(), o.k, o.energy,
        mean_k(o, *attention), o.select.c_str(), o.r == 0 ? c.head_dim() : o.r, block, o.h2o_budget,
        o.h2o_budget > 0 ? o.h2o_recent : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_llama"};
  options o;
  aqua_llama_cli::add_options(app, o);
  return aqua_cli::run(app, argc, argv, [&] { return run(o); });
}
