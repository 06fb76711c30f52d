// Tests of the llama2.c example engine (examples/llama2c): the checkpoint and tokenizer loaders on
// synthetic files written here (valid, truncated, corrupt), the tokenizer against a
// transliteration of llama2.c's run.c, the forward pass against a naive double-precision model
// written here from the format description, and, when the real stories260K data is found, the
// reference behaviour of that checkpoint.
#include <catch2/catch.hpp>

#include "llama2c_support.hpp"

// =============================================================================================
// Checkpoint loader

TEST_CASE("llama2c checkpoint: a synthetic model loads with every tensor where the format puts it",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const std::string path = write_model(dir, m);
  const auto ck = llama2c::checkpoint::load(path);
  const auto& c = ck.cfg();
  CHECK(c.dim == 16);
  CHECK(c.hidden_dim == 24);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.vocab_size == 40);
  CHECK(c.seq_len == 16);
  CHECK(c.shared_classifier);
  CHECK(c.head_dim() == 4);
  CHECK(c.kv_dim() == 8);
  CHECK(llama2c::checkpoint::expected_file_size(c) == m.bytes().size());
  // First and last element of each tensor of the second layer, and the shared classifier.
  CHECK(ck.token_embedding()[5] == m.emb[5]);
  CHECK(ck.wq(1)[0] == m.wq[256]);
  CHECK(ck.wk(1)[127] == m.wk.back());
  CHECK(ck.wv(1)[0] == m.wv[128]);
  CHECK(ck.wo(1)[255] == m.wo.back());
  CHECK(ck.rms_att(1)[0] == m.rms_att[16]);
  CHECK(ck.rms_ffn(1)[15] == m.rms_ffn.back());
  CHECK(ck.w1(1)[0] == m.w1[384]);
  CHECK(ck.w2(1)[383] == m.w2.back());
  CHECK(ck.w3(1)[383] == m.w3.back());
  CHECK(ck.rms_final()[15] == m.rms_final.back());
  CHECK(ck.classifier() == ck.token_embedding());
}

TEST_CASE("llama2c checkpoint: a negative vocab_size reads a separate classifier after the RoPE tables",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m(false);
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  CHECK_FALSE(ck.cfg().shared_classifier);
  CHECK(ck.cfg().vocab_size == 40);
  CHECK(ck.classifier() != ck.token_embedding());
  CHECK(ck.classifier()[0] == m.cls.front());
  CHECK(ck.classifier()[40 * 16 - 1] == m.cls.back());
}

TEST_CASE("llama2c checkpoint: truncated, padded and headerless files are rejected with the path and sizes",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  std::vector<char> bytes = m.bytes();
  const std::string path = dir.file("bad.bin");

  bytes.resize(bytes.size() - 4);
  write_bytes(path, bytes);
  REQUIRE_THROWS_AS(llama2c::checkpoint::load(path), aqua::error);
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(path),
                      Contains(path) && Contains("truncated") && Contains(std::to_string(bytes.size())));

  bytes = m.bytes();
  bytes.push_back(0);
  write_bytes(path, bytes);
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(path), Contains(path) && Contains("needs exactly"));

  write_bytes(path, std::vector<char>(20, 0));
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(path), Contains("less than the 28-byte header"));

  write_bytes(path, std::string());
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(path), Contains("less than the 28-byte header"));

  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(dir.file("missing.bin")), Contains("cannot open"));
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(dir.path.string()), Contains("not a regular file"));
}

TEST_CASE("llama2c checkpoint: absurd or inconsistent header values are rejected before any allocation",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const std::string path = dir.file("bad.bin");
  auto load_with = [&](std::vector<std::int32_t> h) {
    write_bytes(path, m.bytes_with_header(h));
    return llama2c::checkpoint::load(path);
  };
  const auto good = m.header();
  auto with = [&](int field, std::int32_t value) {
    auto h = good;
    h[static_cast<std::size_t>(field)] = value;
    return h;
  };
  REQUIRE_THROWS_WITH(load_with(with(0, -16)), Contains(path) && Contains("dim = -16"));
  REQUIRE_THROWS_WITH(load_with(with(0, 1 << 30)), Contains("dim = 1073741824") && Contains("outside"));
  REQUIRE_THROWS_WITH(load_with(with(1, 0)), Contains("hidden_dim = 0"));
  REQUIRE_THROWS_WITH(load_with(with(2, 0)), Contains("n_layers = 0"));
  REQUIRE_THROWS_WITH(load_with(with(2, 1 << 20)), Contains("n_layers"));
  REQUIRE_THROWS_WITH(load_with(with(3, 3)), Contains("n_heads = 3 does not divide dim = 16"));
  REQUIRE_THROWS_WITH(load_with(with(3, 32)), Contains("n_heads = 32"));
  REQUIRE_THROWS_WITH(load_with(with(4, 3)), Contains("n_kv_heads = 3 does not divide n_heads = 4"));
  REQUIRE_THROWS_WITH(load_with(with(4, 0)), Contains("n_kv_heads = 0"));
  REQUIRE_THROWS_WITH(load_with(with(5, 0)), Contains("vocab_size"));
  REQUIRE_THROWS_WITH(load_with(with(5, std::numeric_limits<std::int32_t>::min())), Contains("vocab_size"));
  REQUIRE_THROWS_WITH(load_with(with(6, -1)), Contains("seq_len = -1"));
  // 16 heads of width 1 cannot be rotated in pairs.
  REQUIRE_THROWS_WITH(load_with({16, 24, 2, 16, 16, 40, 16}), Contains("odd"));
  // A plausible header that does not describe the file: the size check catches it.
  REQUIRE_THROWS_WITH(load_with(with(1, 4096)), Contains("truncated"));
  REQUIRE_THROWS_WITH(load_with(with(5, 20)), Contains("needs exactly"));
}

TEST_CASE("llama2c checkpoint: a non-finite weight is reported as a corrupt file with its offset",
          "[llama2c]") {
  temp_dir dir;
  tiny_model m;
  m.w2[3] = std::numeric_limits<float>::quiet_NaN();
  const std::string path = write_model(dir, m);
  REQUIRE_THROWS_WITH(llama2c::checkpoint::load(path),
                      Contains(path) && Contains("not finite") && Contains("corrupt"));
}

// =============================================================================================
// Tokenizer

TEST_CASE("llama2c tokenizer: loads pieces and scores, and rejects a vocabulary size mismatch", "[llama2c]") {
  temp_dir dir;
  const tiny_vocab v;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, v.bytes());
  const auto tok = llama2c::tokenizer::load(path, v.size());
  CHECK(tok.vocab_size() == v.size());
  CHECK(tok.max_token_length() == v.max_len);
  CHECK(tok.piece(3) == "<0x00>");
  CHECK(tok.piece(v.size() - 1) ==
        "\xC3\xA9"
        "a");
  CHECK(tok.score(v.size() - 1) == -9.0f);
  CHECK(tok.find("abc") >= 259);
  CHECK(tok.find("xyz") == -1);

  REQUIRE_THROWS_WITH(llama2c::tokenizer::load(path, v.size() + 1),
                      Contains(path) && Contains("truncated") && Contains("vocab_size"));
  REQUIRE_THROWS_WITH(llama2c::tokenizer::load(path, v.size() - 1),
                      Contains(path) && Contains("does not match the model's vocab_size"));
  REQUIRE_THROWS_WITH(llama2c::tokenizer::load(dir.file("missing.bin"), v.size()), Contains("cannot open"));
}

TEST_CASE("llama2c tokenizer: truncated and corrupt files are rejected", "[llama2c]") {
  temp_dir dir;
  const tiny_vocab v;
  const std::string path = dir.file("tok.bin");
  const std::vector<char> good = v.bytes();
  auto load_bytes = [&](const std::vector<char>& b) {
    write_bytes(path, b);
    return llama2c::tokenizer::load(path, v.size());
  };
  REQUIRE_THROWS_WITH(load_bytes(std::vector<char>(good.begin(), good.end() - 1)),
                      Contains("truncated inside"));
  REQUIRE_THROWS_WITH(load_bytes({}), Contains("max_token_length"));
  auto patched = [&](std::size_t offset, std::int32_t value) {
    auto b = good;
    std::memcpy(b.data() + offset, &value, 4);
    return b;
  };
  REQUIRE_THROWS_WITH(load_bytes(patched(0, -1)), Contains("max_token_length = -1"));
  // Token 0: score at byte 4, length at byte 8.
  REQUIRE_THROWS_WITH(load_bytes(patched(8, -5)), Contains("token 0 has length -5"));
  REQUIRE_THROWS_WITH(load_bytes(patched(8, 1000)), Contains("token 0 has length 1000"));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::int32_t nan_bits;
  std::memcpy(&nan_bits, &nan, 4);
  REQUIRE_THROWS_WITH(load_bytes(patched(4, nan_bits)), Contains("non-finite score"));
  REQUIRE_THROWS_WITH(llama2c::tokenizer::load(path, 2), Contains("at least"));
}

TEST_CASE("llama2c tokenizer: encode makes run.c's choices (dummy prefix, byte fallback +3, merge order)",
          "[llama2c]") {
  temp_dir dir;
  const tiny_vocab v;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, v.bytes());
  const auto tok = llama2c::tokenizer::load(path, v.size());

  // Hand-checked cases first.
  CHECK(tok.encode("", true, false) == std::vector<int>{1});
  CHECK(tok.encode("", false, true) == std::vector<int>{2});
  CHECK(tok.encode("abc", true, true) == std::vector<int>{1, tok.find(" abc"), 2});
  CHECK(tok.encode("z", false, false) == std::vector<int>{tok.find(" "), 'z' + 3});
  // "ee" scores -1e10 and never merges.
  CHECK(tok.encode("ee", false, false) == std::vector<int>{tok.find(" "), tok.find("e"), tok.find("e")});
  // A 3-byte code point the vocabulary lacks becomes three byte tokens.
  CHECK(tok.encode("\xE2\x80\x94", false, false) ==
        std::vector<int>{tok.find(" "), 0xE2 + 3, 0x80 + 3, 0x94 + 3});

  std::mt19937 rng(11);
  for (int trial = 0; trial < 400; ++trial) {
    const std::string text = random_text(rng, trial % 2 == 1);
    const bool bos = trial % 3 != 0, eos = trial % 5 == 0;
    INFO("text '" << text << "'");
    REQUIRE(tok.encode(text, bos, eos) == run_c_encode(v, text, bos, eos));
  }
}

TEST_CASE("llama2c tokenizer: decode after BOS inverts encode byte for byte", "[llama2c]") {
  temp_dir dir;
  const tiny_vocab v;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, v.bytes());
  const auto tok = llama2c::tokenizer::load(path, v.size());
  CHECK(tok.decode(1, tok.find(" a")) == "a");
  CHECK(tok.decode(5, tok.find(" a")) == " a");
  CHECK(tok.decode(5, 0xE2 + 3) == "\xE2");
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = random_text(rng, true);
    REQUIRE(tok.decode_all(tok.encode(text, true, false)) == text);
  }
}

// =============================================================================================
// Forward pass

namespace {

double max_rel_error(aqua::matrix_view<const float> logits, aqua::index_t row,
                     const std::vector<double>& ref) {
  return aqua_test::normalized_error(
      static_cast<aqua::index_t>(ref.size()), [&](aqua::index_t j) { return logits(row, j); },
      [&](aqua::index_t j) { return ref[static_cast<std::size_t>(j)]; });
}

}  // namespace

TEST_CASE("llama2c transformer: logits equal a naive double-precision model, whole-block and token by token",
          "[llama2c]") {
  temp_dir dir;
  for (const bool shared : {true, false}) {
    const tiny_model m(shared, shared ? 21 : 33);
    const auto ck = llama2c::checkpoint::load(write_model(dir, m));
    const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3, 30};
    const auto ref = m.reference_logits(tokens);
    llama2c::dense_attention attention;
    llama2c::transformer engine(ck, attention);

    // One prefill call over the whole sequence.
    const auto block = engine.forward(tokens.data(), static_cast<aqua::index_t>(tokens.size()));
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      INFO("shared " << shared << ", position " << t);
      CHECK(max_rel_error(block, static_cast<aqua::index_t>(t), ref[t]) < 2e-5);
    }
    // A prefill of 3 followed by one decode call per token.
    engine.reset();
    engine.forward(tokens.data(), 3);
    for (std::size_t t = 3; t < tokens.size(); ++t) {
      const auto one = engine.forward(&tokens[t], 1);
      INFO("shared " << shared << ", decode position " << t);
      CHECK(max_rel_error(one, 0, ref[t]) < 2e-5);
    }
    CHECK(engine.position() == static_cast<aqua::index_t>(tokens.size()));
  }
}

TEST_CASE("llama2c transformer: out-of-vocabulary tokens and context overflow are rejected", "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);
  const int bad = 40;
  REQUIRE_THROWS_WITH(engine.forward(&bad, 1), Contains("token 40 is outside the vocabulary"));
  const std::vector<int> tokens(17, 1);
  REQUIRE_THROWS_WITH(engine.forward(tokens.data(), 17), Contains("17 tokens"));
  engine.forward(tokens.data(), 16);
  REQUIRE_THROWS_WITH(engine.forward(tokens.data(), 1), Contains("exceed the model's context of 16"));
}

TEST_CASE("llama2c transformer: greedy generation and perplexity agree with the naive model", "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const tiny_vocab v;
  // The tiny model has 40 tokens; this test needs a tokenizer of the same size: the first 40
  // pieces of the synthetic vocabulary (specials and byte tokens) plus a " " piece.
  tiny_vocab small;
  small.pieces.assign(v.pieces.begin(), v.pieces.begin() + 39);
  small.scores.assign(v.scores.begin(), v.scores.begin() + 39);
  small.add(" ", -1);
  const std::string tok_path = dir.file("tok40.bin");
  write_bytes(tok_path, small.bytes());
  const auto tok = llama2c::tokenizer::load(tok_path, 40);
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);

  // run.c's loop: 8 positions give at most 8 tokens after BOS; an argmax of BOS ends early.
  const auto g = llama2c::generate_greedy(engine, tok, "", 8);
  REQUIRE(g.tokens.size() <= 9);
  const auto ref = m.reference_logits(g.tokens);
  auto argmax = [&](std::size_t t) {
    return static_cast<int>(std::max_element(ref[t].begin(), ref[t].end()) - ref[t].begin());
  };
  for (std::size_t t = 0; t + 1 < g.tokens.size(); ++t) CHECK(argmax(t) == g.tokens[t + 1]);
  if (g.tokens.size() < 9) CHECK(argmax(g.tokens.size() - 1) == llama2c::tokenizer::bos_id);

  const std::vector<int> tokens = {1, 5, 9, 13, 39, 2, 7};
  const auto r = llama2c::perplexity(engine, tokens);
  const auto lref = m.reference_logits(tokens);
  double nll = 0;
  for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
    double mx = -1e300, sum = 0;
    for (double x : lref[t]) mx = std::max(mx, x);
    for (double x : lref[t]) sum += std::exp(x - mx);
    nll -= lref[t][static_cast<std::size_t>(tokens[t + 1])] - mx - std::log(sum);
  }
  CHECK(r.tokens == 7);
  CHECK(r.predicted == 6);
  CHECK(r.perplexity == Approx(std::exp(nll / 6)).epsilon(1e-5));
}

// =============================================================================================
// Q/K dump

TEST_CASE("llama2c dump: q and k files are head-major [H, rows, d] over every forward call", "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);
  llama2c::qk_dump dump(2, 4, 2, 4);
  // Keep an independent copy of what the observer saw, indexed [layer][position][head][c].
  std::vector<std::vector<float>> seen_q(2);
  engine.set_qk_observer(
      [&](int layer, aqua::index_t, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k) {
        dump.add(layer, q, k);
        for (aqua::index_t r = 0; r < q.extent(1); ++r)
          for (aqua::index_t h = 0; h < 4; ++h)
            for (aqua::index_t c = 0; c < 4; ++c)
              seen_q[static_cast<std::size_t>(layer)].push_back(q(h, r, c));
      });
  const std::vector<int> tokens = {1, 2, 3, 4, 5};
  engine.forward(tokens.data(), 3);
  engine.forward(tokens.data() + 3, 2);
  CHECK(dump.write(dir.path.string()) == 5);
  const auto b = read_bytes(dir.file("q_layer1.npy"));
  const std::size_t header_len = static_cast<unsigned char>(b[8]) + 256u * static_cast<unsigned char>(b[9]);
  CHECK_THAT(std::string(b.data() + 10, header_len), Contains("(4, 5, 4)"));
  REQUIRE(b.size() == 10 + header_len + 4 * 5 * 4 * sizeof(float));
  for (int h = 0; h < 4; ++h)
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 4; ++c) {
        float x;
        std::memcpy(
            &x, b.data() + 10 + header_len + sizeof(float) * static_cast<std::size_t>((h * 5 + r) * 4 + c),
            4);
        CHECK(x == seen_q[1][static_cast<std::size_t>((r * 4 + h) * 4 + c)]);
      }
  const auto k = read_bytes(dir.file("k_layer0.npy"));
  CHECK_THAT(std::string(k.data() + 10, 60), Contains("(2, 5, 4)"));
}

// =============================================================================================
// AQUA attention backend

TEST_CASE("llama2c aqua backend: with k = d and r = d the logits equal dense attention, prefill and decode",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3, 30, 5, 5, 17};
  llama2c::dense_attention dense;
  const auto want = run_logits(ck, dense, tokens, true);
  const aqua::index_t d = m.head_dim();
  for (const bool identity : {true, false}) {
    const auto set =
        identity ? aqua::projection_set::identity(m.layers, m.kv_heads, d, m.heads / m.kv_heads)
                 : aqua::projection_set::random_orthogonal(m.layers, m.kv_heads, d, m.heads / m.kv_heads, 11);
    for (const auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::group}) {
      for (const bool whole : {true, false}) {
        llama2c::aqua_attention_options o;
        o.select = aqua::selection_spec::top_k(d);
        o.mode = mode;
        llama2c::aqua_attention attention(set, o);
        INFO("identity " << identity << ", group " << (mode == aqua::selection_mode::group) << ", whole "
                         << whole);
        CHECK(max_rel_diff(run_logits(ck, attention, tokens, whole), want) < 1e-5);
      }
    }
    // Perplexity through the backend resets its caches between windows.
    llama2c::aqua_attention_options o;
    o.select = aqua::selection_spec::energy(1.0);
    llama2c::aqua_attention attention(set, o);
    llama2c::transformer engine(ck, attention), reference(ck, dense);
    const std::vector<std::vector<int>> windows = {{1, 5, 9, 13, 2}, {1, 7, 7, 30}};
    CHECK(llama2c::perplexity(engine, windows, 1).perplexity ==
          Approx(llama2c::perplexity(reference, windows).perplexity).epsilon(1e-5));
    CHECK(attention.mean_selected() <= d);
  }
}

TEST_CASE("llama2c aqua backend: fewer dims change the result, and bad k or r are rejected", "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3};
  llama2c::dense_attention dense;
  const auto want = run_logits(ck, dense, tokens, true);
  const auto set = aqua::projection_set::random_orthogonal(m.layers, m.kv_heads, m.head_dim(), 2, 3);
  llama2c::aqua_attention_options o;
  o.select = aqua::selection_spec::top_k(1);
  llama2c::aqua_attention one_dim(set, o);
  CHECK(max_rel_diff(run_logits(ck, one_dim, tokens, true), want) > 1e-4);
  o.rank = 2;
  o.select = aqua::selection_spec::top_k(2);
  llama2c::aqua_attention truncated(set, o);
  CHECK(truncated.cache(0).rank() == 2);
  CHECK(max_rel_diff(run_logits(ck, truncated, tokens, false), want) > 1e-4);
  o.select = aqua::selection_spec::top_k(3);
  REQUIRE_THROWS_WITH(llama2c::aqua_attention(set, o), Contains("k = 3"));
  o.rank = 9;
  REQUIRE_THROWS_WITH(llama2c::aqua_attention(set, o), Contains("rank r = 9"));
}

TEST_CASE("llama2c aqua backend: H2O eviction keeps the budget, and its recent window is a sliding window",
          "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3, 30, 5, 5, 17, 2, 8};
  const aqua::index_t d = m.head_dim();
  const auto set = aqua::projection_set::random_orthogonal(m.layers, m.kv_heads, d, m.heads / m.kv_heads, 5);
  // Token by token through a backend, checking after every step that no layer's cache holds more
  // than `limit` tokens.
  auto decode_logits = [&](llama2c::aqua_attention& attention, aqua::index_t limit) {
    llama2c::transformer engine(ck, attention);
    std::vector<std::vector<double>> rows;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const auto logits = engine.forward(&tokens[t], 1);
      rows.emplace_back(logits.data(), logits.data() + logits.extent(1));
      for (int l = 0; l < m.layers; ++l) REQUIRE(attention.cache(l).size() <= limit);
    }
    return rows;
  };
  auto max_diff = [](const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
    double worst = 0, scale = 0;
    for (std::size_t t = 0; t < a.size(); ++t)
      for (std::size_t j = 0; j < a[t].size(); ++j) {
        worst = aqua_test::max_or_nan(worst, std::abs(a[t][j] - b[t][j]));
        scale = aqua_test::max_or_nan(scale, std::abs(b[t][j]));
      }
    return worst / scale;
  };
  llama2c::aqua_attention_options o;
  o.select = aqua::selection_spec::top_k(d);

  // A budget covering the sequence evicts nothing: exact attention (the naive model).
  o.h2o_budget = static_cast<aqua::index_t>(tokens.size());
  o.h2o_recent = 2;
  {
    llama2c::aqua_attention attention(set, o);
    CHECK(max_diff(decode_logits(attention, o.h2o_budget), m.reference_logits(tokens)) < 2e-5);
    CHECK(attention.evicted_tokens() == 0);
  }
  // Every kept token recent (W = B): after each step the last B tokens stay, so each query sees
  // itself and the B before it, a sliding window of B + 1 positions in the naive model.
  for (const aqua::index_t b : {3, 5}) {
    o.h2o_budget = o.h2o_recent = b;
    llama2c::aqua_attention attention(set, o);
    const auto got = decode_logits(attention, b);
    INFO("B = " << b);
    CHECK(max_diff(got, m.reference_logits(tokens, static_cast<std::size_t>(b) + 1)) < 2e-5);
    CHECK(max_diff(got, m.reference_logits(tokens)) > 1e-3);
    // Each layer evicts one token per KV head per step once the cache passes B.
    CHECK(attention.evicted_tokens() == double(m.layers) * double(tokens.size() - std::size_t(b)));
  }
  // Heavy hitters (W < B): still within the budget; the engine resets between windows.
  o.h2o_budget = 4;
  o.h2o_recent = 1;
  {
    llama2c::aqua_attention attention(set, o);
    decode_logits(attention, 4);
    llama2c::transformer engine(ck, attention);
    const std::vector<std::vector<int>> windows = {{1, 5, 9, 13, 2, 7, 30}, {1, 7, 7, 30}};
    CHECK(std::isfinite(llama2c::perplexity(engine, windows, 1).perplexity));
    // A block of queries is refused (eviction is per decode step).
    engine.reset();
    REQUIRE_THROWS_WITH(engine.forward(tokens.data(), 3), Contains("token by token"));
  }
  o.h2o_budget = 0;
  o.h2o_recent = 1;
  REQUIRE_THROWS_WITH(llama2c::aqua_attention(set, o), Contains("needs an H2O budget"));
}

// =============================================================================================
// The real checkpoint (skipped without the data)

namespace {

// The data directory holding `files` (paths relative to it). When none is configured and none is
// found beside the repository, "" after marking the case skipped (ctest reports it so; the suite
// passes without the data). A directory set explicitly (AQUA_DATA_DIR) that is unusable or lacks a
// file fails the case: a configured run must not pass by skipping.
std::string data_dir_holding(const std::vector<std::string>& files, const char* what) {
  const std::string repo_root = fs::path(__FILE__).parent_path().parent_path().string();
  const char* env = std::getenv("AQUA_DATA_DIR");
  const bool configured = env != nullptr && *env != '\0';
  std::string data;
  try {
    data = llama2c::resolve_data_dir("", repo_root);
  } catch (const aqua::error& e) {
    FAIL(e.what());
  }
  for (const auto& f : files) {
    const bool present = !data.empty() && fs::exists(data + "/" + f);
    if (configured && !present) FAIL("AQUA_DATA_DIR='" << env << "' holds no " << f);
    if (!present) {
      aqua_test::skip_case(std::string(what) +
                           " not found (set AQUA_DATA_DIR or place it in ../shared/data)");
      return "";
    }
  }
  return data;
}

std::string stories260k_data_dir() {
  return data_dir_holding({"stories260K/stories260K.bin"}, "stories260K");
}

}  // namespace

TEST_CASE("llama2c stories260K: greedy text and perplexity match the llama2.c reference", "[llama2c][data]") {
  const std::string data = stories260k_data_dir();
  if (data.empty()) return;
  const auto ck = llama2c::checkpoint::load(data + "/stories260K/stories260K.bin");
  const auto tok = llama2c::tokenizer::load(data + "/stories260K/tok512.bin", ck.cfg().vocab_size);
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);

  const auto g = llama2c::generate_greedy(engine, tok, "", 40);
  CHECK_THAT(g.text, Catch::Matchers::StartsWith("Once upon a time, there was a little girl named Lily."));

  const std::string en = data + "/text/en_pud.txt";
  // llama2.c's runner: about 55 over the first 512 tokens of the file, newlines as spaces.
  const auto whole =
      llama2c::perplexity(engine, llama2c::perplexity_tokens(tok, llama2c::read_text_flat(en), 512));
  CHECK(whole.tokens == 512);
  CHECK(whole.perplexity == Approx(55.0).epsilon(0.03));
  // Issue 7's reference set-up: sentences 501-1000 joined by single spaces, dense 76.53 (2%).
  const auto held_out = llama2c::perplexity(
      engine,
      llama2c::perplexity_tokens(tok, llama2c::join_lines(llama2c::read_lines(en), 501, 1000, en), 512));
  CHECK(held_out.perplexity == Approx(76.53).epsilon(0.02));
}

TEST_CASE(
    "llama2c perplexity windows: BOS-led consecutive chunks whose pooled NLL is the token-weighted mean",
    "[llama2c]") {
  temp_dir dir;
  const tiny_vocab v;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, v.bytes());
  const auto tok = llama2c::tokenizer::load(path, v.size());
  const std::string text = "ab zz cd e e abcd Q ba dd";
  const std::vector<int> ids = tok.encode(text, true, false);
  REQUIRE(ids.size() > 12);

  const auto one = llama2c::perplexity_windows(tok, text, 5, 1);
  REQUIRE(one.size() == 1);
  CHECK(one[0] == llama2c::perplexity_tokens(tok, text, 5));

  const auto all = llama2c::perplexity_windows(tok, text, 5, 0);
  CHECK(all.size() == (ids.size() - 1 + 3) / 4);
  std::vector<int> joined;
  for (const auto& w : all) {
    REQUIRE(w.size() >= 2);
    REQUIRE(w.size() <= 5);
    CHECK(w[0] == llama2c::tokenizer::bos_id);
    joined.insert(joined.end(), w.begin() + 1, w.end());
  }
  CHECK(joined == std::vector<int>(ids.begin() + 1, ids.end()));
  CHECK(llama2c::perplexity_windows(tok, text, 5, 2).size() == 2);
  REQUIRE_THROWS_WITH(llama2c::perplexity_windows(tok, text, 1, 0), Contains("at least 2"));

  // Pooled perplexity on the tiny model (token ids must fit its 40-token vocabulary).
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);
  const std::vector<std::vector<int>> windows = {{1, 5, 9, 13}, {1, 7, 7}, {1, 30, 2, 11, 4}};
  double nll = 0;
  int predicted = 0;
  for (const auto& w : windows) {
    const auto r = llama2c::perplexity(engine, w);
    nll += std::log(r.perplexity) * r.predicted;
    predicted += r.predicted;
  }
  const auto pooled = llama2c::perplexity(engine, windows);
  CHECK(pooled.predicted == 3 + 2 + 4);
  CHECK(pooled.tokens == 12);
  CHECK(pooled.perplexity == Approx(std::exp(nll / predicted)).epsilon(1e-12));
}

TEST_CASE("llama2c stories260K: a projection calibrated on English queries beats identity bases at k = 4",
          "[llama2c][data]") {
  const std::string data = stories260k_data_dir();
  if (data.empty()) return;
  const auto ck = llama2c::checkpoint::load(data + "/stories260K/stories260K.bin");
  const auto tok = llama2c::tokenizer::load(data + "/stories260K/tok512.bin", ck.cfg().vocab_size);
  const auto& c = ck.cfg();
  const std::string en = data + "/text/en_pud.txt";
  const auto lines = llama2c::read_lines(en);

  // Calibrate on the queries of sentences 1-500 as the reference does: the 511 positions of the
  // first 512-token window that predict a token (the model is causal, so a 511-token run gives
  // exactly those rows).
  aqua::calibrator calib(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim());
  llama2c::dense_attention dense;
  llama2c::transformer engine(ck, dense);
  engine.set_qk_observer([&](int layer, aqua::index_t, aqua::tensor3_view<const float> q,
                             aqua::tensor3_view<const float>) { calib.add_queries(layer, q); });
  llama2c::perplexity(engine, llama2c::perplexity_tokens(tok, llama2c::join_lines(lines, 1, 500, en), 511));
  const aqua::projection_set calibrated = calib.finalize();

  // Evaluate on sentences 501-1000 (disjoint).
  const auto held_out = llama2c::perplexity_tokens(tok, llama2c::join_lines(lines, 501, 1000, en), 512);
  auto ppl_k4 = [&](const aqua::projection_set& set) {
    llama2c::aqua_attention_options o;
    o.select = aqua::selection_spec::top_k(4);
    llama2c::aqua_attention attention(set, o);
    llama2c::transformer model(ck, attention);
    return llama2c::perplexity(model, held_out).perplexity;
  };
  const double with_calibration = ppl_k4(calibrated);
  const double with_identity = ppl_k4(
      aqua::projection_set::identity(c.n_layers, c.n_kv_heads, c.head_dim(), c.n_heads / c.n_kv_heads));
  // Issue 7's reference: identity 98.63, calibrated 86.04 (2%).
  CHECK(with_identity == Approx(98.63).epsilon(0.02));
  CHECK(with_calibration < 0.95 * with_identity);
  CHECK(with_calibration == Approx(86.04).epsilon(0.02));
}

// =============================================================================================
// The d = 64 model (kjv64, issue 22; skipped without the data)

namespace {

// The data directory holding kjv64/ and the stories260K tokenizer it uses, under the same rules.
std::string kjv64_data_dir() {
  return data_dir_holding({"kjv64/model.bin", "kjv64/literature.txt", "stories260K/tok512.bin"}, "kjv64");
}

}  // namespace

TEST_CASE("llama2c kjv64: greedy text and dense perplexity match the llama2.c and float64 references",
          "[llama2c][data]") {
  const std::string data = kjv64_data_dir();
  if (data.empty()) return;
  const auto ck = llama2c::checkpoint::load(data + "/kjv64/model.bin");
  const auto& c = ck.cfg();
  REQUIRE(c.head_dim() == 64);
  REQUIRE(c.n_heads == 4);
  REQUIRE(c.n_kv_heads == 2);
  const auto tok = llama2c::tokenizer::load(data + "/stories260K/tok512.bin", c.vocab_size);
  llama2c::dense_attention attention;
  llama2c::transformer engine(ck, attention);

  // The reference runner: this sentence, then BOS (so fewer tokens than the 256 steps allowed).
  const auto g = llama2c::generate_greedy(engine, tok, "", 256);
  CHECK(g.text == "And the second many people are all their enemies.");
  CHECK(g.tokens.size() < 257);

  // Dense perplexity over the first 512 tokens of the held-out text: 15.3627 (0.1%).
  const auto literature =
      llama2c::perplexity_tokens(tok, llama2c::read_text_flat(data + "/kjv64/literature.txt"), 512);
  const auto lit = llama2c::perplexity(engine, literature);
  CHECK(lit.tokens == 512);
  CHECK(lit.predicted == 511);
  CHECK(lit.perplexity == Approx(15.3627).epsilon(0.001));
  // Token by token (the decode path) gives the same figure.
  CHECK(llama2c::perplexity(engine, literature, 1).perplexity == Approx(15.3627).epsilon(0.001));

  // Out of domain: en_pud sentences 501-1000 joined by single spaces, 19.4919 (0.1%).
  const std::string en = data + "/text/en_pud.txt";
  if (fs::exists(en)) {
    const auto pud = llama2c::perplexity(
        engine,
        llama2c::perplexity_tokens(tok, llama2c::join_lines(llama2c::read_lines(en), 501, 1000, en), 512));
    CHECK(pud.perplexity == Approx(19.4919).epsilon(0.001));
  } else {
    WARN("text/en_pud.txt not found: the out-of-domain figure is not checked");
  }
}

TEST_CASE("llama2c kjv64: AQUA with a calib.txt projection matches the float64 reference at k = 48, 32, 16",
          "[llama2c][data]") {
  const std::string data = kjv64_data_dir();
  if (data.empty()) return;
  const std::string calib_txt = data + "/kjv64/calib.txt";
  if (!fs::exists(calib_txt)) {
    if (std::getenv("AQUA_DATA_DIR") != nullptr && *std::getenv("AQUA_DATA_DIR") != '\0')
      FAIL("AQUA_DATA_DIR lacks kjv64/calib.txt");
    aqua_test::skip_case("kjv64/calib.txt not found");
    return;
  }
  const auto ck = llama2c::checkpoint::load(data + "/kjv64/model.bin");
  const auto& c = ck.cfg();
  const auto tok = llama2c::tokenizer::load(data + "/stories260K/tok512.bin", c.vocab_size);

  // The reference set-up: post-RoPE queries of the 511 positions of calib.txt's first 512-token
  // window that predict a token (a causal 511-token run gives exactly those rows), no centering.
  aqua::calibrator calib(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim());
  llama2c::dense_attention dense;
  llama2c::transformer engine(ck, dense);
  engine.set_qk_observer([&](int layer, aqua::index_t, aqua::tensor3_view<const float> q,
                             aqua::tensor3_view<const float>) { calib.add_queries(layer, q); });
  llama2c::perplexity(engine, llama2c::perplexity_tokens(tok, llama2c::read_text_flat(calib_txt), 511));
  const aqua::projection_set set = calib.finalize();

  const auto literature =
      llama2c::perplexity_tokens(tok, llama2c::read_text_flat(data + "/kjv64/literature.txt"), 512);
  auto ppl_at = [&](int k) {
    llama2c::aqua_attention_options o;
    o.select = aqua::selection_spec::top_k(k);
    llama2c::aqua_attention attention(set, o);
    llama2c::transformer model(ck, attention);
    return llama2c::perplexity(model, literature).perplexity;
  };
  // Figures of an independent float64 implementation of the same set-up (0.1%); k = d is exact.
  CHECK(ppl_at(64) == Approx(15.3627).epsilon(0.001));
  CHECK(ppl_at(48) == Approx(15.365).epsilon(0.001));
  CHECK(ppl_at(32) == Approx(15.402).epsilon(0.001));
  CHECK(ppl_at(16) == Approx(15.597).epsilon(0.001));
}
