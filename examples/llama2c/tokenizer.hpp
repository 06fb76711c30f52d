// llama2.c tokenizer: loader, BPE encoder and decoder with the exact behaviour of llama2.c `run.c`.
//
// File: int32 max_token_length, then per token (the model's vocab_size of them, the file does not
// say how many) a float32 merge score, an int32 byte length and that many bytes.
// Conventions of the format: id 0 <unk>, 1 BOS, 2 EOS, ids 3..258 the raw bytes 0x00..0xFF written
// as "<0xXX>" (byte fallback: byte b encodes as id b + 3).
//
// Encoding, as run.c does it: optional BOS; a dummy-prefix token " " when the text is not empty;
// then each UTF-8 code point (at most 4 bytes) becomes its vocabulary piece, or its bytes as byte
// tokens when the piece is unknown; then, repeatedly, the adjacent pair whose concatenated pieces
// form the vocabulary entry with the highest score is merged (ties: the leftmost pair; scores at
// or below -1e10 never merge). run.c rescans every pair after each merge (quadratic); here a
// priority queue keyed by (score, position) makes the same choices in O(n log n), so whole
// documents encode quickly. The tests hold it against a transliteration of run.c.
#pragma once

#include <aqua/config.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "checkpoint.hpp"  // internal::read_file_bytes, internal::concat

namespace llama2c {

class tokenizer {
public:
  static constexpr int unk_id = 0, bos_id = 1, eos_id = 2, first_byte_id = 3;
  /// Scores at or below this never merge (run.c's initial best score).
  static constexpr float no_merge_score = -1e10f;
  static constexpr int max_piece_bytes = 1 << 16;

  /// Reads `path` for a model with `vocab_size` tokens; throws aqua::error naming the file and
  /// the problem (truncated file, trailing bytes, i.e. a vocabulary size mismatch, bad lengths).
  static tokenizer load(const std::string& path, int vocab_size) {
    check_vocab_size(vocab_size, path);
    const std::vector<char> bytes = internal::read_file_bytes(path, "tokenizer");
    return load(bytes.data(), bytes.size(), vocab_size, path);
  }

  /// The same from the bytes of a tokenizer file in memory (`size` bytes at `data`, copied);
  /// errors call them `name`. The file overload reads the file and calls this one.
  static tokenizer load(const void* data, std::size_t size, int vocab_size,
                        const std::string& name = "<memory>") {
    const std::string& path = name;
    check_vocab_size(vocab_size, path);
    AQUA_CHECK(data != nullptr || size == 0, "llama2c tokenizer '", path, "': data is null but size is ",
               size);
    const std::string_view bytes(static_cast<const char*>(data), size);
    std::size_t pos = 0;
    auto read_i32 = [&](const char* what, int token) {
      AQUA_CHECK(bytes.size() - pos >= 4, "llama2c tokenizer '", path, "': truncated at byte ", pos,
                 " while reading ", what, token >= 0 ? internal::concat(" of token ", token) : std::string(),
                 " (the model's vocab_size is ", vocab_size, "; a smaller tokenizer does not fit it)");
      std::int32_t v;
      std::memcpy(&v, bytes.data() + pos, 4);
      pos += 4;
      return v;
    };
    tokenizer t;
    t.max_token_length_ = read_i32("max_token_length", -1);
    AQUA_CHECK(t.max_token_length_ >= 1 && t.max_token_length_ <= max_piece_bytes, "llama2c tokenizer '",
               path, "': max_token_length = ", t.max_token_length_, " is outside [1, ", max_piece_bytes, "]");
    // Every token takes at least 8 bytes (score and length): a vocab_size the file cannot hold is
    // reported before the vectors are sized from it.
    const std::uint64_t min_bytes = 4 + 8 * static_cast<std::uint64_t>(vocab_size);
    AQUA_CHECK(bytes.size() >= min_bytes, "llama2c tokenizer '", path,
               "': truncated: the model's vocab_size is ", vocab_size, ", which needs at least ", min_bytes,
               " bytes, but the file has ", bytes.size(), " (a smaller tokenizer does not fit the model)");
    t.pieces_.resize(static_cast<std::size_t>(vocab_size));
    t.scores_.resize(static_cast<std::size_t>(vocab_size));
    for (int i = 0; i < vocab_size; ++i) {
      const std::int32_t raw_score = read_i32("the score", i);
      float score;
      std::memcpy(&score, &raw_score, 4);
      AQUA_CHECK(std::isfinite(score), "llama2c tokenizer '", path, "': token ", i,
                 " has a non-finite score");
      const std::int32_t len = read_i32("the length", i);
      AQUA_CHECK(len >= 0 && len <= t.max_token_length_, "llama2c tokenizer '", path, "': token ", i,
                 " has length ", len, " outside [0, max_token_length = ", t.max_token_length_, "]");
      AQUA_CHECK(bytes.size() - pos >= static_cast<std::size_t>(len), "llama2c tokenizer '", path,
                 "': truncated inside the bytes of token ", i, " (the model's vocab_size is ", vocab_size,
                 ")");
      t.pieces_[static_cast<std::size_t>(i)].assign(bytes.data() + pos, static_cast<std::size_t>(len));
      t.scores_[static_cast<std::size_t>(i)] = score;
      pos += static_cast<std::size_t>(len);
    }
    AQUA_CHECK(pos == bytes.size(), "llama2c tokenizer '", path, "': ", bytes.size() - pos,
               " bytes follow the last of the model's ", vocab_size,
               " tokens: the tokenizer does not match the model's vocab_size (or the file is corrupt)");
    // Duplicated pieces (none in real files) resolve to the lowest id, deterministically.
    for (int i = vocab_size - 1; i >= 0; --i) t.lookup_[t.pieces_[static_cast<std::size_t>(i)]] = i;
    return t;
  }

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  int max_token_length() const { return max_token_length_; }
  const std::string& piece(int id) const { return pieces_.at(static_cast<std::size_t>(id)); }
  float score(int id) const { return scores_.at(static_cast<std::size_t>(id)); }
  /// The id of an exact piece, or -1.
  int find(std::string_view piece) const {
    const auto it = lookup_.find(std::string(piece));
    return it == lookup_.end() ? -1 : it->second;
  }

  /// Token ids of `text` (see the header comment for the exact rules).
  std::vector<int> encode(std::string_view text, bool bos, bool eos) const {
    std::vector<int> ids;
    ids.reserve(text.size() + 3);
    if (bos) ids.push_back(bos_id);
    if (!text.empty()) {
      const int space = find(" ");
      AQUA_CHECK(space >= 0, "llama2c tokenizer: the vocabulary has no \" \" piece for the dummy prefix");
      ids.push_back(space);
    }
    split_code_points(text, ids);
    merge_pairs(ids);
    if (eos) ids.push_back(eos_id);
    return ids;
  }

  /// The bytes `token` stands for when it follows `previous` (run.c's decode): a piece after BOS
  /// loses its leading space, and "<0xXX>" pieces are the raw byte.
  std::string decode(int previous, int token) const {
    std::string_view p = piece(token);
    if (previous == bos_id && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    int byte = 0;
    if (parse_byte_piece(p, byte)) return std::string(1, static_cast<char>(byte));
    return std::string(p);
  }

  /// Decoded text of `ids[1..]`, each piece decoded after its predecessor (ids[0] is the start).
  std::string decode_all(const std::vector<int>& ids) const {
    std::string out;
    for (std::size_t i = 1; i < ids.size(); ++i) out += decode(ids[i - 1], ids[i]);
    return out;
  }

private:
  static void check_vocab_size(int vocab_size, const std::string& path) {
    AQUA_CHECK(vocab_size >= 3, "llama2c tokenizer '", path, "': vocab_size = ", vocab_size,
               " but the format needs at least <unk>, BOS and EOS");
  }

  static bool parse_byte_piece(std::string_view p, int& byte) {
    if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return false;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(p[3]), lo = hex(p[4]);
    if (hi < 0 || lo < 0) return false;
    byte = hi * 16 + lo;
    return true;
  }

  /// run.c's first pass: code points (a lead byte plus up to 3 continuation bytes) to pieces,
  /// unknown ones to byte tokens.
  void split_code_points(std::string_view text, std::vector<int>& ids) const {
    std::string buffer;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) buffer.clear();
      buffer.push_back(static_cast<char>(c));
      const bool next_continues =
          i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_continues && buffer.size() < 4) continue;
      const int id = find(buffer);
      if (id >= 0) {
        ids.push_back(id);
      } else {
        for (char b : buffer) {
          const int byte_id = first_byte_id + static_cast<unsigned char>(b);
          AQUA_CHECK(byte_id < vocab_size(), "llama2c tokenizer: byte fallback needs id ", byte_id,
                     " but the vocabulary has ", vocab_size(), " tokens");
          ids.push_back(byte_id);
        }
      }
      buffer.clear();
    }
  }

  /// Greedy BPE: always merge the best-scoring adjacent pair, leftmost on ties. Tokens form a
  /// linked list; the queue holds candidate pairs and drops stale ones when they surface.
  void merge_pairs(std::vector<int>& ids) const {
    const std::size_t n = ids.size();
    if (n < 2) return;
    struct candidate {
      float score;
      std::size_t left, right;
      int left_id, right_id, merged_id;
    };
    auto worse = [](const candidate& a, const candidate& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<candidate, std::vector<candidate>, decltype(worse)> queue(worse);
    constexpr std::size_t none = static_cast<std::size_t>(-1);
    std::vector<std::size_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = i == 0 ? none : i - 1;
      next[i] = i + 1 == n ? none : i + 1;
    }
    std::string joined;
    auto offer = [&](std::size_t left) {
      if (left == none || next[left] == none) return;
      const std::size_t right = next[left];
      joined = piece(ids[left]);
      joined += piece(ids[right]);
      const int merged = find(joined);
      if (merged >= 0 && score(merged) > no_merge_score)
        queue.push({score(merged), left, right, ids[left], ids[right], merged});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) offer(i);
    std::vector<bool> alive(n, true);
    while (!queue.empty()) {
      const candidate c = queue.top();
      queue.pop();
      // A pair is current while both ends live, are still adjacent and hold the same pieces
      // (a node's piece only grows, so an old id never comes back).
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || ids[c.left] != c.left_id ||
          ids[c.right] != c.right_id)
        continue;
      ids[c.left] = c.merged_id;
      alive[c.right] = false;
      next[c.left] = next[c.right];
      if (next[c.right] != none) prev[next[c.right]] = c.left;
      offer(prev[c.left]);
      offer(c.left);
    }
    std::size_t out = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (alive[i]) ids[out++] = ids[i];
    ids.resize(out);
  }

  int max_token_length_ = 0;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
};

}  // namespace llama2c
