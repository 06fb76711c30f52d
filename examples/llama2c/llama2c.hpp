// llama2.c on aqua: the two things the example does with a model, greedy generation and
// teacher-forced perplexity, plus the small text helpers they need. Include this one header to get
// the checkpoint and tokenizer loaders, the transformer and the data directory's lookup
// (data_dir.hpp) as well.
#pragma once

#include <aqua/config.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "data_dir.hpp"
#include "tokenizer.hpp"
#include "transformer.hpp"

namespace llama2c {

// ---------------------------------------------------------------------------------------------
// Generation and perplexity

struct generation {
  std::vector<int> tokens;  // BOS, the prompt tokens, then the generated ones
  std::string text;         // decoded tokens[1..]: the prompt followed by the continuation
};

/// run.c's greedy loop: positions 0 .. steps-1 are run and each yields the next token, so the
/// text holds `steps` tokens (prompt included). The prompt is forced; later tokens are the argmax
/// (first maximum) of the logits; BOS ends the sequence.
inline generation generate_greedy(transformer& model, const tokenizer& tok, const std::string& prompt,
                                  int steps) {
  AQUA_CHECK(steps >= 1, "llama2c::generate_greedy: steps must be at least 1, got ", steps);
  generation g;
  g.tokens = tok.encode(prompt, true, false);
  steps = std::min<int>(steps, model.cfg().seq_len);
  AQUA_CHECK(static_cast<int>(g.tokens.size()) <= steps, "llama2c::generate_greedy: the prompt has ",
             g.tokens.size(), " tokens with BOS, more than steps = ", steps);
  model.reset();
  // The whole prompt goes through one prefill call; each later token is one decode call.
  auto logits = model.forward(g.tokens.data(), static_cast<index_t>(g.tokens.size()));
  index_t last = logits.extent(0) - 1;
  for (;;) {
    const float* row = logits.data() + last * logits.stride(0);
    const int next = static_cast<int>(std::max_element(row, row + logits.extent(1)) - row);
    if (next == tokenizer::bos_id) break;
    g.tokens.push_back(next);
    if (static_cast<int>(g.tokens.size()) == steps + 1) break;
    logits = model.forward(&g.tokens.back(), 1);
    last = 0;
  }
  g.text = tok.decode_all(g.tokens);
  return g;
}

struct perplexity_result {
  double perplexity = 0;
  double mean_nll = 0;  // nats per predicted token
  int tokens = 0;       // T, BOS included
  int predicted = 0;    // T - 1
};

/// Teacher-forced perplexity of `tokens` (tokens[0] is BOS): exp of the mean negative
/// log-likelihood of tokens[1..T-1] given their prefixes. One causal prefill over all T tokens,
/// or, with `block` > 0, forward calls of `block` tokens (block = 1: token-by-token decoding, the
/// path a decode-only attention choice such as group-shared selection takes).
inline perplexity_result perplexity(transformer& model, const std::vector<int>& tokens, int block = 0) {
  AQUA_CHECK(tokens.size() >= 2, "llama2c::perplexity: needs at least 2 tokens, got ", tokens.size());
  AQUA_CHECK(static_cast<index_t>(tokens.size()) <= model.cfg().seq_len,
             "llama2c::perplexity: ", tokens.size(), " tokens exceed the model's context of ",
             model.cfg().seq_len);
  AQUA_CHECK(block >= 0, "llama2c::perplexity: block must be >= 0, got ", block);
  model.reset();
  const std::size_t step = block == 0 ? tokens.size() : static_cast<std::size_t>(block);
  double nll = 0;
  for (std::size_t first = 0; first + 1 < tokens.size(); first += step) {
    const std::size_t count = std::min(step, tokens.size() - first);
    const auto logits = model.forward(tokens.data() + first, static_cast<index_t>(count));
    for (std::size_t t = first; t < first + count && t + 1 < tokens.size(); ++t) {
      const float* row = logits.data() + static_cast<index_t>(t - first) * logits.stride(0);
      const index_t vocab = logits.extent(1);
      const double top = *std::max_element(row, row + vocab);
      double sum = 0;
      for (index_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(row[j]) - top);
      nll += top + std::log(sum) - static_cast<double>(row[tokens[t + 1]]);
    }
  }
  perplexity_result r;
  r.tokens = static_cast<int>(tokens.size());
  r.predicted = r.tokens - 1;
  r.mean_nll = nll / r.predicted;
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

/// Perplexity over several independent windows (each starts with BOS): exp of the mean NLL over
/// every predicted token of every window. One window gives the same figure as perplexity().
inline perplexity_result perplexity(transformer& model, const std::vector<std::vector<int>>& windows,
                                    int block = 0) {
  AQUA_CHECK(!windows.empty(), "llama2c::perplexity: no windows");
  perplexity_result total;
  double nll = 0;
  for (const auto& w : windows) {
    const perplexity_result r = perplexity(model, w, block);
    nll += r.mean_nll * r.predicted;
    total.tokens += r.tokens;
    total.predicted += r.predicted;
  }
  total.mean_nll = nll / total.predicted;
  total.perplexity = std::exp(total.mean_nll);
  return total;
}

// ---------------------------------------------------------------------------------------------
// Text

/// The file's lines (without their '\n'; a final line without one counts too).
inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AQUA_CHECK(in.good(), "llama2c: cannot open text file '", path, "'");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

/// The whole file with every '\n' turned into a space (the perplexity convention).
inline std::string read_text_flat(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AQUA_CHECK(in.good(), "llama2c: cannot open text file '", path, "'");
  std::ostringstream os;
  os << in.rdbuf();
  std::string text = os.str();
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

/// Lines first .. last (1-based, inclusive) joined by single spaces.
inline std::string join_lines(const std::vector<std::string>& lines, int first, int last,
                              const std::string& path) {
  AQUA_CHECK(first >= 1 && first <= last && last <= static_cast<int>(lines.size()), "llama2c: line range ",
             first, "-", last, " is not within the ", lines.size(), " lines of '", path, "'");
  std::string text;
  for (int i = first; i <= last; ++i) {
    if (i > first) text += ' ';
    text += lines[static_cast<std::size_t>(i - 1)];
  }
  return text;
}

/// What a perplexity run reads of the file: all of it (read_text_flat) when first_line is 0, else
/// lines first_line .. last_line (join_lines).
inline std::string read_text(const std::string& path, int first_line, int last_line) {
  return first_line == 0 ? read_text_flat(path) : join_lines(read_lines(path), first_line, last_line, path);
}

/// Teacher-forcing input: BOS + the text's tokens, cut to the first `max_tokens` (BOS included).
inline std::vector<int> perplexity_tokens(const tokenizer& tok, const std::string& text, int max_tokens) {
  std::vector<int> ids = tok.encode(text, true, false);
  if (max_tokens > 0 && static_cast<int>(ids.size()) > max_tokens)
    ids.resize(static_cast<std::size_t>(max_tokens));
  return ids;
}

/// The text's tokens cut into consecutive windows of `max_tokens` (>= 2), each BOS + the next
/// max_tokens - 1 tokens of the text; window 0 is perplexity_tokens(). At most `max_windows`
/// windows (0: all); a shorter last window is kept when it predicts at least one token. More
/// windows give calibration more rows than one context holds.
inline std::vector<std::vector<int>> perplexity_windows(const tokenizer& tok, const std::string& text,
                                                        int max_tokens, int max_windows) {
  AQUA_CHECK(max_tokens >= 2, "llama2c::perplexity_windows: max_tokens must be at least 2, got ", max_tokens);
  const std::vector<int> ids = tok.encode(text, true, false);
  const std::size_t body = static_cast<std::size_t>(max_tokens) - 1;
  std::vector<std::vector<int>> windows;
  for (std::size_t start = 1; start < ids.size(); start += body) {
    if (max_windows > 0 && static_cast<int>(windows.size()) == max_windows) break;
    std::vector<int> w = {tokenizer::bos_id};
    w.insert(w.end(), ids.begin() + static_cast<std::ptrdiff_t>(start),
             ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), start + body)));
    windows.push_back(std::move(w));
  }
  AQUA_CHECK(!windows.empty(), "llama2c::perplexity_windows: the text is empty");
  return windows;
}

// ---------------------------------------------------------------------------------------------
// The tools' output

/// The summary line of a perplexity run (stdout) and its speed (stderr), the same for every tool so
/// that runs compare at a glance; `lines` is the --lines text, empty for the whole file.
inline void print_perplexity(const perplexity_result& r, std::size_t windows, const char* attention,
                             const std::string& text_path, const std::string& lines, double seconds) {
  std::printf(
      "perplexity %.4f over %d tokens in %zu window(s) (%d predicted), mean NLL %.5f nats, attention %s, "
      "%s%s%s\n",
      r.perplexity, r.tokens, windows, r.predicted, r.mean_nll, attention, text_path.c_str(),
      lines.empty() ? "" : " lines ", lines.c_str());
  std::fprintf(stderr, "%.3f s (%.0f tok/s)\n", seconds, r.tokens / seconds);
}

/// JSON string literal; bytes that are not valid UTF-8 (byte-fallback tokens can split a code
/// point) become U+FFFD so the line stays valid JSON.
inline std::string json_string(const std::string& s) {
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

}  // namespace llama2c
