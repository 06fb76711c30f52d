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
#include "policy.hpp"
#include "qk_dump.hpp"

#ifndef AQUA_LLAMA2C_REPO_ROOT
#define AQUA_LLAMA2C_REPO_ROOT ""
#endif

namespace {

using aqua_llama_cli::options;

bool exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

/// `path` unless it is missing, relative, and present in the data directory.
std::string in_data_dir(const std::string& path, const std::string& data_dir) {
  if (exists(path) || data_dir.empty() || path.empty() || path[0] == '/') return path;
  const std::string candidate = data_dir + "/" + path;
  return exists(candidate) ? candidate : path;
}

/// JSON string literal; bytes that are not valid UTF-8 (byte-fallback tokens can split a code
/// point) become U+FFFD so the line stays valid JSON.
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      const std::size_t len = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
      bool ok = len > 0 && c < 0xF5 && i + len <= s.size();
      for (std::size_t j = 1; ok && j < len; ++j) ok = (static_cast<unsigned char>(s[i + j]) & 0xC0) == 0x80;
      if (ok) {
        out.append(s, i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        ++i;
      }
    }
  }
  return out + "\"";
}

/// Dense attention, or AQUA over projected caches built from the projection file (or identity).
std::unique_ptr<llama2c::attention_backend> make_attention(const options& o, const llama2c::config& c) {
  if (!o.policy.empty()) {
    llama2c::selection_policy p = llama2c::selection_policy::load(o.policy);
    AQUA_CHECK(
        p.layers == c.n_layers && p.q_heads == c.n_heads && p.kv_heads == c.n_kv_heads && p.d == c.head_dim(),
        "aqua_llama: the policy '", o.policy, "' is for ", p.layers, " layers, ", p.q_heads, "/", p.kv_heads,
        " heads, d = ", p.d, " but the model has ", c.n_layers, ", ", c.n_heads, "/", c.n_kv_heads, ", ",
        c.head_dim());
    return std::make_unique<llama2c::policy_attention>(p, c.seq_len);
  }
  if (!o.aqua()) return std::make_unique<llama2c::dense_attention>(o.threads);
  const aqua::projection_set projections =
      o.identity
          ? aqua::projection_set::identity(c.n_layers, c.n_kv_heads, c.head_dim(), c.n_heads / c.n_kv_heads)
          : aqua::load_projection_set(o.projection);
  AQUA_CHECK(projections.layers() == c.n_layers && projections.kv_heads() == c.n_kv_heads &&
                 projections.d() == c.head_dim(),
             "aqua_llama: the projection file '", o.projection, "' holds ", projections.layers(),
             " layers x ", projections.kv_heads(), " KV heads of d = ", projections.d(),
             " but the model has ", c.n_layers, " x ", c.n_kv_heads, " of d = ", c.head_dim());
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
  if (!o.policy.empty()) return static_cast<const llama2c::policy_attention&>(attention).mean_selected();
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

/// --fit-policy: two passes of exact attention over the calibration windows (moments, then errors
/// and energy fractions under the fitted bases), then counts or thresholds per head.
int fit_policy(const options& o, const llama2c::checkpoint& model,
               const std::vector<std::vector<int>>& windows) {
  const auto& c = model.cfg();
  const int layers = c.n_layers, hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim(), heads = layers * hq;
  // The reference's 511-position rule: a window's last position predicts nothing, so its query
  // (and key) stay out of the calibration rows.
  auto run_windows = [&](llama2c::attention_backend& a) {
    llama2c::transformer engine(model, a);
    for (const auto& w : windows) {
      engine.reset();
      if (w.size() >= 2) engine.forward(w.data(), aqua::index_t(w.size()) - 1);
    }
  };
  llama2c::moment_collector moments(layers, hq, hkv, d);
  run_windows(moments);
  const auto basis = o.basis == "joint"            ? llama2c::basis_kind::joint
                     : o.basis == "joint-centered" ? llama2c::basis_kind::joint_centered
                     : o.basis == "queries"        ? llama2c::basis_kind::queries
                                                   : llama2c::basis_kind::identity;
  const auto weight = o.weight == "key-rms"   ? llama2c::weight_kind::key_rms
                      : o.weight == "key-std" ? llama2c::weight_kind::key_std
                                              : llama2c::weight_kind::none;
  llama2c::selection_policy p = llama2c::make_base_policy(moments, layers, hq, hkv, d, basis, weight);
  llama2c::error_collector errors(p, model, o.alloc != "uniform");
  run_windows(errors);

  std::vector<double> target(std::size_t(heads), o.budget);
  if (o.alloc == "dp") {
    std::vector<std::vector<double>> err(static_cast<std::size_t>(heads),
                                         std::vector<double>(static_cast<std::size_t>(d)));
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        for (int k = 1; k <= d; ++k) err[p.head_at(l, h)][std::size_t(k - 1)] = errors.error(l, h, k);
    const auto counts = llama2c::allocate_counts(err, d, int(std::lround(o.budget * heads)));
    for (int i = 0; i < heads; ++i) target[std::size_t(i)] = counts[std::size_t(i)];
  }
  double predicted = 0, calibration_k = 0;
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < hq; ++h) {
      const std::size_t i = p.head_at(l, h);
      if (o.rule == "fixed") {
        p.k[i] = int(target[i]);
        predicted += errors.error(l, h, p.k[i]);
        calibration_k += p.k[i];
      } else if (o.rule == "energy-head") {
        p.k[i] = 0;
        p.tau[i] = llama2c::threshold_for(errors.energy(l, h), d, target[i]);
        calibration_k += llama2c::mean_count(errors.energy(l, h), d, p.tau[i]);
      }
    }
  if (o.alloc == "lagrange") {
    std::vector<const std::vector<float>*> cum, err;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        cum.push_back(&errors.energy(l, h)), err.push_back(&errors.query_errors(l, h));
    const auto taus = llama2c::lagrange_thresholds(cum, err, d, o.budget);
    calibration_k = 0;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h) {
        const std::size_t i = p.head_at(l, h);
        p.k[i] = 0;
        p.tau[i] = taus[i];
        calibration_k += llama2c::mean_count(errors.energy(l, h), d, p.tau[i]);
      }
  }
  if (o.rule == "energy") {
    std::vector<float> pooled;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        pooled.insert(pooled.end(), errors.energy(l, h).begin(), errors.energy(l, h).end());
    const double tau = llama2c::threshold_for(pooled, d, o.budget);
    for (int i = 0; i < heads; ++i) p.k[std::size_t(i)] = 0, p.tau[std::size_t(i)] = tau;
    calibration_k = llama2c::mean_count(pooled, d, tau) * heads;
  }
  calibration_k /= heads;
  char buf[256];
  std::snprintf(buf, sizeof buf, "basis %s, weight %s, budget %g, alloc %s, rule %s, %zu calibration windows",
                o.basis.c_str(), o.weight.c_str(), o.budget, o.alloc.c_str(), o.rule.c_str(), windows.size());
  p.description = buf;
  p.save(o.fit_policy);
  std::printf("policy %s: %s; mean k on calibration %.3f\n", o.fit_policy.c_str(), buf, calibration_k);
  for (int l = 0; l < layers; ++l) {
    std::printf("layer %d:", l);
    for (int h = 0; h < hq; ++h) {
      const std::size_t i = p.head_at(l, h);
      if (p.k[i] > 0)
        std::printf(" k%d", p.k[i]);
      else
        std::printf(" tau%.4f(k%.2f)", p.tau[i], llama2c::mean_count(errors.energy(l, h), d, p.tau[i]));
    }
    std::printf("\n");
  }
  if (o.alloc == "dp" && o.rule == "fixed")
    std::printf("calibration residual error (sum over heads): %.6g\n", predicted);
  if (o.json)
    std::printf("{\"mode\": \"fit-policy\", \"policy\": %s, \"mean_k\": %.4f, \"windows\": %zu}\n",
                json_string(o.fit_policy).c_str(), calibration_k, windows.size());
  return 0;
}

int run(const options& o) {
  const std::string data_dir = llama2c::resolve_data_dir(o.data_dir, AQUA_LLAMA2C_REPO_ROOT);
  auto default_path = [&](const std::string& given, const char* file) {
    if (!given.empty()) return given;
    AQUA_CHECK(!data_dir.empty(),
               "aqua_llama: no --model/--tokenizer given and no data directory found "
               "(use --data-dir or AQUA_DATA_DIR)");
    return data_dir + "/stories260K/" + file;
  };
  const std::string model_path = default_path(o.model, "stories260K.bin");
  // Every flag is checked before anything is loaded: those that depend on the model against its
  // header, the text file (which may live in the data directory) for being readable.
  aqua_llama_cli::check_against_model(o, llama2c::checkpoint::read_config(model_path));
  const std::string text_path = o.generate ? "" : in_data_dir(o.ppl, data_dir);
  if (!o.generate) {
    std::string path = text_path;
    const std::string problem = aqua_cli::readable_file()(path);
    if (!problem.empty()) throw aqua_cli::usage_error("--ppl: " + problem);
  }
  const llama2c::checkpoint model = llama2c::checkpoint::load(model_path);
  const llama2c::tokenizer tok =
      llama2c::tokenizer::load(default_path(o.tokenizer, "tok512.bin"), model.cfg().vocab_size);
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
                  attention->name(), g.tokens.size(), json_string(g.text).c_str());
    return 0;
  }

  const std::string text = o.lines.empty() ? llama2c::read_text_flat(text_path)
                                           : llama2c::join_lines(llama2c::read_lines(text_path), o.first_line,
                                                                 o.last_line, text_path);
  const auto windows = llama2c::perplexity_windows(tok, text, std::min(o.max_tokens, c.seq_len), o.windows);
  if (!o.fit_policy.empty()) return fit_policy(o, model, windows);

  llama2c::qk_dump dump(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim());
  if (!o.dump_qk.empty())
    engine.set_qk_observer([&](int layer, aqua::index_t, aqua::tensor3_view<const float> q,
                               aqua::tensor3_view<const float> k) { dump.add(layer, q, k); });
  // Group-shared selection exists in decode only, so it is measured token by token.
  // H2O evicts after every decode step: token by token too.
  const int block = o.block > 0 ? o.block : (o.select == "group" || o.h2o_budget > 0) ? 1 : 0;
  const llama2c::perplexity_result r = llama2c::perplexity(engine, windows, block);
  const double s = seconds();
  std::printf(
      "perplexity %.4f over %d tokens in %zu window(s) (%d predicted), mean NLL %.5f nats, attention %s, "
      "%s%s%s\n",
      r.perplexity, r.tokens, windows.size(), r.predicted, r.mean_nll, attention->name(), text_path.c_str(),
      o.lines.empty() ? "" : " lines ", o.lines.c_str());
  std::fprintf(stderr, "%.3f s (%.0f tok/s)\n", s, r.tokens / s);
  if (o.aqua())
    std::printf("aqua: %s, %s selection, %s, r = %d%s\n",
                o.identity ? "identity bases" : o.projection.c_str(), o.select.c_str(),
                selection_text(o, *attention).c_str(), o.r == 0 ? c.head_dim() : o.r,
                block == 1 ? ", token by token" : "");
  if (o.h2o_budget > 0)
    std::printf(
        "h2o: budget %d tokens per KV head (%d recent), %.0f tokens evicted per KV head over all layers\n",
        o.h2o_budget, o.h2o_recent, static_cast<const llama2c::aqua_attention&>(*attention).evicted_tokens());
  if (!o.policy.empty()) std::printf("policy: %s, mean k %.4f\n", o.policy.c_str(), mean_k(o, *attention));
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
        json_string(text_path).c_str(), json_string(o.lines).c_str(), o.k, o.energy, mean_k(o, *attention),
        o.select.c_str(), o.r == 0 ? c.head_dim() : o.r, block, o.h2o_budget,
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
