// Helpers of the llama2.c engine tests (tests/test_llama2c.cpp) and the policy experiment's tests
// (experiments/llama2c_policies/test_policies.cpp): a tiny synthetic model and tokenizer written here,
// a naive transliteration of run.c's encoder, and logits through an attention backend. Included once
// per test file, where the helpers were: the anonymous namespace keeps them local to that file.
#pragma once

#include <catch2/catch.hpp>

#include <aqua/calibrate.hpp>

#include "../examples/llama2c/aqua_attention.hpp"
#include "../examples/llama2c/llama2c.hpp"
#include "../examples/llama2c/qk_dump.hpp"

#include <unistd.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "file_support.hpp"
#include "skip_support.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

using aqua_test::temp_dir;
using aqua_test::write_bytes;

inline std::vector<char> read_bytes(const std::string& path) {
  return aqua_test::read_bytes<std::vector<char>>(path);
}

template <class T>
inline void append_raw(std::vector<char>& out, const T& value) {
  const char* p = reinterpret_cast<const char*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

// ---------------------------------------------------------------------------------------------
// A tiny synthetic model: each tensor kept separately, so the oracle never relies on the loader's
// offsets.

struct tiny_model {
  int dim = 16, hidden = 24, layers = 2, heads = 4, kv_heads = 2, vocab = 40, seq_len = 16;
  bool shared = true;
  std::vector<float> emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, rope, cls;

  int head_dim() const { return dim / heads; }
  int kv_dim() const { return kv_heads * head_dim(); }

  explicit tiny_model(bool shared_classifier = true, std::uint32_t seed = 7) : shared(shared_classifier) {
    auto make = [&](std::size_t n, double stddev, double mean = 0.0) {
      std::vector<float> t(n);
      aqua_test::fill_normal(t, seed++, stddev);
      for (auto& x : t) x += static_cast<float>(mean);
      return t;
    };
    const auto L = static_cast<std::size_t>(layers), D = static_cast<std::size_t>(dim),
               H = static_cast<std::size_t>(hidden), KV = static_cast<std::size_t>(kv_dim());
    emb = make(static_cast<std::size_t>(vocab) * D, 1.0);
    rms_att = make(L * D, 0.1, 1.0);
    wq = make(L * D * D, 0.4);
    wk = make(L * KV * D, 0.4);
    wv = make(L * KV * D, 0.4);
    wo = make(L * D * D, 0.3);
    rms_ffn = make(L * D, 0.1, 1.0);
    w1 = make(L * H * D, 0.3);
    w2 = make(L * D * H, 0.3);
    w3 = make(L * H * D, 0.3);
    rms_final = make(D, 0.1, 1.0);
    rope = make(static_cast<std::size_t>(seq_len * head_dim()), 1.0);  // legacy tables: ignored
    if (!shared) cls = make(static_cast<std::size_t>(vocab) * D, 0.5);
  }

  std::vector<std::int32_t> header() const {
    return {dim, hidden, layers, heads, kv_heads, shared ? vocab : -vocab, seq_len};
  }

  std::vector<char> bytes() const { return bytes_with_header(header()); }

  std::vector<char> bytes_with_header(const std::vector<std::int32_t>& h) const {
    std::vector<char> out;
    for (auto v : h) append_raw(out, v);
    for (const auto* t :
         {&emb, &rms_att, &wq, &wk, &wv, &wo, &rms_ffn, &w1, &w2, &w3, &rms_final, &rope, &cls})
      for (float x : *t) append_raw(out, x);
    return out;
  }

  /// Naive double-precision forward pass over `tokens`; returns the logits of every position.
  /// window > 0: each query attends only to the last `window` positions (itself included).
  std::vector<std::vector<double>> reference_logits(const std::vector<int>& tokens,
                                                    std::size_t window = 0) const {
    const int hd = head_dim(), KV = kv_dim(), group = heads / kv_heads;
    auto matvec = [](const std::vector<float>& w, std::size_t offset, int rows, int cols,
                     const std::vector<double>& x) {
      std::vector<double> y(static_cast<std::size_t>(rows), 0.0);
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
          y[static_cast<std::size_t>(r)] +=
              static_cast<double>(w[offset + static_cast<std::size_t>(r * cols + c)]) *
              x[static_cast<std::size_t>(c)];
      return y;
    };
    auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& w, std::size_t offset) {
      double ss = 0;
      for (double v : x) ss += v * v;
      const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
      std::vector<double> y(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) y[i] = static_cast<double>(w[offset + i]) * x[i] * inv;
      return y;
    };
    auto rope_rotate = [&](std::vector<double>& v, int pos) {
      for (std::size_t j = 0; j < v.size(); j += 2) {
        const double angle =
            pos * std::pow(10000.0, -static_cast<double>(j % static_cast<std::size_t>(hd)) / hd);
        const double a = v[j], b = v[j + 1];
        v[j] = a * std::cos(angle) - b * std::sin(angle);
        v[j + 1] = a * std::sin(angle) + b * std::cos(angle);
      }
    };
    std::vector<std::vector<std::vector<double>>> kc(static_cast<std::size_t>(layers)),
        vc(static_cast<std::size_t>(layers));
    std::vector<std::vector<double>> all_logits;
    for (std::size_t pos = 0; pos < tokens.size(); ++pos) {
      std::vector<double> x(static_cast<std::size_t>(dim));
      for (int i = 0; i < dim; ++i)
        x[static_cast<std::size_t>(i)] = emb[static_cast<std::size_t>(tokens[pos] * dim + i)];
      for (int l = 0; l < layers; ++l) {
        const auto ul = static_cast<std::size_t>(l);
        const auto xb = rmsnorm(x, rms_att, ul * static_cast<std::size_t>(dim));
        auto q = matvec(wq, ul * static_cast<std::size_t>(dim * dim), dim, dim, xb);
        auto k = matvec(wk, ul * static_cast<std::size_t>(KV * dim), KV, dim, xb);
        const auto v = matvec(wv, ul * static_cast<std::size_t>(KV * dim), KV, dim, xb);
        rope_rotate(q, static_cast<int>(pos));
        rope_rotate(k, static_cast<int>(pos));
        kc[ul].push_back(k);
        vc[ul].push_back(v);
        std::vector<double> att(static_cast<std::size_t>(dim), 0.0);
        for (int h = 0; h < heads; ++h) {
          const int kvh = h / group;
          const std::size_t first = window > 0 && pos + 1 > window ? pos + 1 - window : 0;
          std::vector<double> s(pos + 1, 0.0);
          double mx = -1e300;
          for (std::size_t t = first; t <= pos; ++t) {
            double dot = 0;
            for (int c = 0; c < hd; ++c)
              dot +=
                  q[static_cast<std::size_t>(h * hd + c)] * kc[ul][t][static_cast<std::size_t>(kvh * hd + c)];
            s[t] = dot / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, s[t]);
          }
          double sum = 0;
          for (std::size_t t = first; t <= pos; ++t) sum += (s[t] = std::exp(s[t] - mx));
          for (std::size_t t = first; t <= pos; ++t)
            for (int c = 0; c < hd; ++c)
              att[static_cast<std::size_t>(h * hd + c)] +=
                  s[t] / sum * vc[ul][t][static_cast<std::size_t>(kvh * hd + c)];
        }
        const auto o = matvec(wo, ul * static_cast<std::size_t>(dim * dim), dim, dim, att);
        for (int i = 0; i < dim; ++i) x[static_cast<std::size_t>(i)] += o[static_cast<std::size_t>(i)];
        const auto xf = rmsnorm(x, rms_ffn, ul * static_cast<std::size_t>(dim));
        auto a = matvec(w1, ul * static_cast<std::size_t>(hidden * dim), hidden, dim, xf);
        const auto b = matvec(w3, ul * static_cast<std::size_t>(hidden * dim), hidden, dim, xf);
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = a[i] / (1.0 + std::exp(-a[i])) * b[i];
        const auto f = matvec(w2, ul * static_cast<std::size_t>(dim * hidden), dim, hidden, a);
        for (int i = 0; i < dim; ++i) x[static_cast<std::size_t>(i)] += f[static_cast<std::size_t>(i)];
      }
      x = rmsnorm(x, rms_final, 0);
      all_logits.push_back(matvec(shared ? emb : cls, 0, vocab, dim, x));
    }
    return all_logits;
  }
};

inline std::string write_model(const temp_dir& dir, const tiny_model& m,
                               const std::string& name = "model.bin") {
  const std::string path = dir.file(name);
  write_bytes(path, m.bytes());
  return path;
}

// ---------------------------------------------------------------------------------------------
// A synthetic tokenizer: <unk>, BOS, EOS, the 256 byte tokens, then merge pieces.

struct tiny_vocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  int max_len = 0;

  tiny_vocab() {
    add("<unk>", 0);
    add("\n<s>\n", 0);
    add("\n</s>\n", 0);
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      add(buf, 0);
    }
    // Ties (-1 twice, -3 twice) and a piece at -1e10 that must never merge.
    const std::pair<const char*, float> merges[] = {
        {" ", -20},
        {"a", -20},
        {"b", -20},
        {"c", -20},
        {"d", -20},
        {"e", -20},
        {"\xC3\xA9", -20},  // é, a 2-byte code point known to the vocabulary
        {"ab", -1},
        {"ba", -1},
        {" a", -2},
        {"abc", -3},
        {" ab", -3},
        {"cd", -4},
        {"dd", -5},
        {"e e", -6},
        {" abc", -7},
        {"abcd", -8},
        {"ee", -1e10f},
        {"\xC3\xA9"
         "a",
         -9}};
    for (const auto& m : merges) add(m.first, m.second);
  }
  void add(const std::string& p, float s) {
    pieces.push_back(p);
    scores.push_back(s);
    max_len = std::max(max_len, static_cast<int>(p.size()));
  }
  int size() const { return static_cast<int>(pieces.size()); }

  std::vector<char> bytes() const {
    std::vector<char> out;
    append_raw(out, static_cast<std::int32_t>(max_len));
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      append_raw(out, scores[i]);
      append_raw(out, static_cast<std::int32_t>(pieces[i].size()));
      out.insert(out.end(), pieces[i].begin(), pieces[i].end());
    }
    return out;
  }
};

/// llama2.c run.c's encode(), transliterated: linear lookup, full rescan after every merge.
inline std::vector<int> run_c_encode(const tiny_vocab& v, const std::string& text, bool bos, bool eos) {
  auto lookup = [&](const std::string& s) {
    for (int i = 0; i < v.size(); ++i)
      if (v.pieces[static_cast<std::size_t>(i)] == s) return i;
    return -1;
  };
  std::vector<int> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c & 0xC0) != 0x80) buf.clear();
    buf += c;
    const char next = i + 1 < text.size() ? text[i + 1] : '\0';
    if ((next & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char b : buf) tokens.push_back(static_cast<unsigned char>(b) + 3);
    }
    buf.clear();
  }
  for (;;) {
    float best_score = -1e10f;
    int best_id = -1, best_idx = -1;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int id = lookup(v.pieces[static_cast<std::size_t>(tokens[i])] +
                            v.pieces[static_cast<std::size_t>(tokens[i + 1])]);
      if (id != -1 && v.scores[static_cast<std::size_t>(id)] > best_score) {
        best_score = v.scores[static_cast<std::size_t>(id)];
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[static_cast<std::size_t>(best_idx)] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

inline std::string random_text(std::mt19937& rng, bool with_odd_bytes) {
  static const std::vector<std::string> atoms = {"a", "b",        "c", "d", "e",
                                                 " ", "\xC3\xA9", "z", "Q", "\xE2\x80\x94"};
  static const std::vector<std::string> odd = {"\xFF", "\x80", "\xC3", "\xF0\x9F\x98\x80\x80", "\n"};
  std::uniform_int_distribution<int> len(0, 24), pick(0, 99);
  std::string s;
  const int n = len(rng);
  for (int i = 0; i < n; ++i) {
    const int r = pick(rng);
    if (with_odd_bytes && r < 8)
      s += odd[static_cast<std::size_t>(r) % odd.size()];
    else
      s += atoms[static_cast<std::size_t>(r) % atoms.size()];
  }
  return s;
}

}  // namespace

// AQUA attention backend helpers

namespace {

/// Logits of `tokens` through `attention`: one prefill of 3 then token-by-token decoding, or one
/// prefill over everything when `whole` is set.
inline std::vector<std::vector<float>> run_logits(const llama2c::checkpoint& ck,
                                                  llama2c::attention_backend& attention,
                                                  const std::vector<int>& tokens, bool whole) {
  llama2c::transformer engine(ck, attention);
  std::vector<std::vector<float>> rows;
  auto keep = [&](aqua::matrix_view<const float> logits) {
    for (aqua::index_t t = 0; t < logits.extent(0); ++t)
      rows.emplace_back(logits.data() + t * logits.stride(0),
                        logits.data() + t * logits.stride(0) + logits.extent(1));
  };
  if (whole) {
    keep(engine.forward(tokens.data(), static_cast<aqua::index_t>(tokens.size())));
    return rows;
  }
  keep(engine.forward(tokens.data(), 3));
  for (std::size_t t = 3; t < tokens.size(); ++t) keep(engine.forward(&tokens[t], 1));
  return rows;
}

inline double max_rel_diff(const std::vector<std::vector<float>>& a,
                           const std::vector<std::vector<float>>& b) {
  double worst = 0;
  for (std::size_t t = 0; t < a.size(); ++t) {
    double num = 0, den = 0;
    for (std::size_t j = 0; j < a[t].size(); ++j) {
      num = aqua_test::max_or_nan(num, std::abs(double(a[t][j]) - double(b[t][j])));
      den = aqua_test::max_or_nan(den, std::abs(double(b[t][j])));
    }
    worst = aqua_test::max_or_nan(worst, num / den);
  }
  return worst;
}

}  // namespace
