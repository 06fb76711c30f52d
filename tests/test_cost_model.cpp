// Cost model: hand-counted costs, closed forms against the numeric break-even solve, monotonicity,
// k = d never breaking even, and argument validation.
#include <aqua/cost_model.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

using aqua::cost_config;
using aqua::key_projection_cost;
using aqua::selection_sharing;
using Catch::Matchers::Contains;

namespace {

cost_config make_config(std::int64_t d, std::int64_t k,
                        key_projection_cost kp = key_projection_cost::amortised) {
  cost_config c;
  c.d = d;
  c.k = k;
  c.key_projection = kp;
  return c;
}

// The paper's formulas written out here, independently of the header's closed-form helpers.
double paper_break_even(double d, double k, key_projection_cost kp, double group) {
  const double base = d * d / (d - k);
  if (kp == key_projection_cost::per_query) return 2 * base;
  if (kp == key_projection_cost::per_new_key) return (1 + 1 / group) * base;
  return base;
}

// Evaluates a configuration in a constant expression: the model must stay usable at compile time.
constexpr double constexpr_break_even_128_96() {
  cost_config c;
  c.k = 96;
  return *aqua::break_even_decode_flops(c);
}
static_assert(constexpr_break_even_128_96() > 511.999 && constexpr_break_even_128_96() < 512.001,
              "d = 128, k = 96 breaks even at 512 tokens");
static_assert(*aqua::break_even_flops_closed_form(128, 96, key_projection_cost::per_query) == 1024.0,
              "the closed form is exact");

}  // namespace

TEST_CASE("cost model counts the hand-computed FLOPs and bytes of a tiny decode", "[cost_model]") {
  // d = 4, k = 2, N = 10, one head, T = 1, fp32, amortised key projection, selection free.
  cost_config c = make_config(4, 2);
  c.tile = 1;
  const auto dense = aqua::dense_decode_cost(c, 10), aqua_cost = aqua::aqua_decode_cost(c, 10);
  CHECK(dense.score_flops == 80);  // 2 * 10 * 4
  CHECK(dense.value_flops == 80);
  CHECK(dense.flops() == 160);
  CHECK(dense.bytes() == 320);              // 2 * 10 * 4 * 4
  CHECK(aqua_cost.projection_flops == 32);  // 2 * 4 * 4 (q~ = q P)
  CHECK(aqua_cost.score_flops == 40);       // 2 * 10 * 2
  CHECK(aqua_cost.value_flops == 80);
  CHECK(aqua_cost.flops() == 152);
  CHECK(aqua_cost.key_bytes == 80);  // 10 tokens * 2 dims * 4 bytes
  CHECK(aqua_cost.value_bytes == 160);
  CHECK(aqua_cost.projection_bytes == 64);  // 4 * 4 * 4
  CHECK(aqua_cost.bytes() == 304);
  CHECK(aqua::decode_flop_ratio(c, 10) == Approx(160.0 / 152.0));
  CHECK(aqua::decode_byte_ratio(c, 10) == Approx(320.0 / 304.0));

  c.key_projection = key_projection_cost::per_query;
  c.selection_flops_per_dim = 3;
  c.include_values = false;
  const auto charged = aqua::aqua_decode_cost(c, 10);
  CHECK(charged.projection_flops == 64);  // q and the key, 2 * 16 each
  CHECK(charged.selection_flops == 12);   // 3 per dim * 4 dims
  CHECK(charged.value_flops == 0);
}

TEST_CASE("cost model counts GQA bytes once per KV head and FLOPs once per query head", "[cost_model]") {
  cost_config c = make_config(128, 32);
  c.hq = 32;
  c.hkv = 8;
  c.sharing = selection_sharing::group_shared;
  const auto dense = aqua::dense_decode_cost(c, 1000), aqua_cost = aqua::aqua_decode_cost(c, 1000);
  CHECK(dense.score_flops == 32.0 * 2 * 1000 * 128);
  CHECK(dense.key_bytes == 8.0 * 1000 * 128 * 4);
  CHECK(aqua_cost.score_flops == 32.0 * 2 * 1000 * 32);
  CHECK(aqua_cost.key_bytes == 8.0 * 1000 * 32 * 4);
  CHECK(aqua_cost.projection_bytes == 8.0 * 128 * 128 * 4);

  c.key_projection = key_projection_cost::per_new_key;
  CHECK(aqua::aqua_decode_cost(c, 1000).projection_flops == 32.0 * 2 * 128 * 128 + 8.0 * 2 * 128 * 128);
}

TEST_CASE("key dims read are rounded up to whole tiles and grow with the per-head union", "[cost_model]") {
  cost_config c = make_config(128, 33);
  CHECK(aqua::key_dims_read(c) == 64);  // 33 dims span two 32-dim tiles
  c.k = 32;
  CHECK(aqua::key_dims_read(c) == 32);
  c.tile = 1;
  c.k = 33;
  CHECK(aqua::key_dims_read(c) == 33);
  c.tile = 128;
  CHECK(aqua::key_dims_read(c) == 128);

  c.tile = 16;
  c.k = 32;
  c.hq = 8;
  c.hkv = 2;  // g = 4: the union bound is min(128, 4 * 32) = 128
  CHECK(aqua::key_dims_read(c) == 128);
  c.union_spread = aqua::union_spread_identical;
  CHECK(aqua::key_dims_read(c) == 32);
  c.union_spread = 0.5;  // 32 + 0.5 * 96 = 80 = five 16-dim tiles
  CHECK(aqua::key_dims_read(c) == 80);
  c.union_spread = 0.45;  // 32 + 43.2 = 75.2, rounded up to 80
  CHECK(aqua::key_dims_read(c) == 80);
  c.sharing = selection_sharing::group_shared;
  CHECK(aqua::key_dims_read(c) == 32);

  c.sharing = selection_sharing::per_head;
  c.union_spread = aqua::union_spread_disjoint;
  c.r = 48;  // truncation caps what can be read
  CHECK(aqua::key_dims_read(c) == 48);
}

TEST_CASE("numeric FLOP break-even agrees with the paper's closed forms", "[cost_model]") {
  CHECK(*aqua::break_even_decode_flops(make_config(128, 96)) == Approx(512).epsilon(1e-12));
  CHECK(*aqua::break_even_decode_flops(make_config(128, 96, key_projection_cost::per_query)) ==
        Approx(1024).epsilon(1e-12));
  for (std::int64_t d : {8, 64, 128, 256})
    for (std::int64_t k = 1; k < d; k += (d / 8 > 1 ? d / 8 - 1 : 1))
      for (auto kp :
           {key_projection_cost::amortised, key_projection_cost::per_query, key_projection_cost::per_new_key})
        for (std::int64_t group : {1, 4}) {
          CAPTURE(d, k, static_cast<int>(kp), group);
          cost_config c = make_config(d, k, kp);
          c.hkv = 2;
          c.hq = 2 * group;
          const double expected = paper_break_even(double(d), double(k), kp, double(group));
          const auto solved = aqua::break_even_decode_flops(c);
          REQUIRE(solved.has_value());
          CHECK(*solved == Approx(expected).epsilon(1e-9));
          CHECK(*aqua::break_even_flops_closed_form(d, k, kp, group) == Approx(expected).epsilon(1e-12));
          c.include_values = false;  // the value term is the same for both methods: no effect
          CHECK(*aqua::break_even_decode_flops(c) == Approx(expected).epsilon(1e-9));
        }
}

TEST_CASE("numeric break-even with a selection cost adds s d to the fixed cost", "[cost_model]") {
  cost_config c = make_config(128, 64);
  c.selection_flops_per_dim = aqua::selection_flops_topk;
  // (2 d^2 + s d) / (2 (d - k)) = (32768 + 512) / 128 = 260
  CHECK(*aqua::break_even_decode_flops(c) == Approx(260).epsilon(1e-9));
}

TEST_CASE("numeric byte break-even agrees with d^2 e_P / ((d - D) e)", "[cost_model]") {
  for (std::int64_t tile : {1, 16, 32})
    for (std::int64_t k : {8, 32, 33, 64, 96, 100})
      for (double elem : {2.0, 4.0}) {
        CAPTURE(tile, k, elem);
        cost_config c = make_config(128, k);
        c.tile = tile;
        c.elem_bytes = elem;
        const double read = std::ceil(double(k) / double(tile)) * double(tile);
        const auto solved = aqua::break_even_decode_bytes(c);
        if (read >= 128) {
          CHECK_FALSE(solved.has_value());
          CHECK_FALSE(aqua::break_even_bytes_closed_form(c).has_value());
        } else {
          REQUIRE(solved.has_value());
          const double expected = 128.0 * 128.0 * 4.0 / ((128.0 - read) * elem);
          CHECK(*solved == Approx(expected).epsilon(1e-9));
          CHECK(*aqua::break_even_bytes_closed_form(c) == Approx(expected).epsilon(1e-12));
        }
      }
  cost_config c = make_config(128, 96);
  CHECK(*aqua::break_even_decode_bytes(c) == Approx(512).epsilon(1e-9));  // T = 32: D = 96
  c.projection_elem_bytes = 0;  // P cache-resident: cheaper from the first token
  CHECK(*aqua::break_even_decode_bytes(c) < 1e-6);
}

TEST_CASE("numeric prefill break-even agrees with 2 d^2 / (d - k) - 1", "[cost_model]") {
  for (std::int64_t d : {64, 128, 256})
    for (std::int64_t k : {d / 8, d / 2, d - d / 8}) {
      CAPTURE(d, k);
      const double expected = 2.0 * double(d) * double(d) / double(d - k) - 1.0;
      const auto solved = aqua::break_even_prefill_flops(make_config(d, k));
      REQUIRE(solved.has_value());
      CHECK(*solved == Approx(expected).epsilon(1e-9));
      CHECK(*aqua::break_even_prefill_flops_closed_form(d, k) == Approx(expected).epsilon(1e-12));
    }
}

TEST_CASE("break-even is where the cost curves cross", "[cost_model]") {
  cost_config c = make_config(128, 48, key_projection_cost::per_new_key);
  c.hq = 32;
  c.hkv = 8;
  c.selection_flops_per_dim = aqua::selection_flops_topk;
  c.tile = 16;
  const double flops_at = *aqua::break_even_decode_flops(c);
  CHECK(aqua::aqua_decode_cost(c, flops_at * 0.999).flops() >
        aqua::dense_decode_cost(c, flops_at * 0.999).flops());
  CHECK(aqua::aqua_decode_cost(c, flops_at * 1.001).flops() <
        aqua::dense_decode_cost(c, flops_at * 1.001).flops());
  c.sharing = selection_sharing::group_shared;
  const double bytes_at = *aqua::break_even_decode_bytes(c);
  CHECK(aqua::aqua_decode_cost(c, bytes_at * 0.999).bytes() >
        aqua::dense_decode_cost(c, bytes_at * 0.999).bytes());
  CHECK(aqua::aqua_decode_cost(c, bytes_at * 1.001).bytes() <
        aqua::dense_decode_cost(c, bytes_at * 1.001).bytes());
}

TEST_CASE("modelled speedup grows with N and AQUA cost grows with N", "[cost_model]") {
  for (std::int64_t k : {16, 64, 112}) {
    cost_config c = make_config(128, k, key_projection_cost::per_query);
    c.selection_flops_per_dim = aqua::selection_flops_topk;
    double previous_flops = 0, previous_bytes = 0, previous_cost = -1;
    for (double n = 1; n <= 1 << 20; n *= 1.5) {
      CAPTURE(k, n);
      const double flops = aqua::decode_flop_ratio(c, n), bytes = aqua::decode_byte_ratio(c, n);
      CHECK(flops > previous_flops);
      CHECK(bytes > previous_bytes);
      CHECK(aqua::aqua_decode_cost(c, n).flops() > previous_cost);
      previous_flops = flops;
      previous_bytes = bytes;
      previous_cost = aqua::aqua_decode_cost(c, n).flops();
    }
    // Values are read and multiplied in full: the asymptotic FLOP speedup is 2d / (d + k).
    CHECK(aqua::decode_flop_ratio(c, 1e12) == Approx(256.0 / double(128 + k)).epsilon(1e-6));
  }
}

TEST_CASE("break-even grows and speedup shrinks as more dims are kept", "[cost_model]") {
  for (std::int64_t d : {64, 128, 256}) {
    double previous_flops = 0, previous_prefill = 0, previous_bytes = 0, previous_ratio = 1e300;
    for (std::int64_t k = 1; k < d; ++k) {
      CAPTURE(d, k);
      cost_config c = make_config(d, k, key_projection_cost::per_query);
      c.tile = 16;
      const double flops = *aqua::break_even_decode_flops(c);
      const double prefill = *aqua::break_even_prefill_flops(c);
      CHECK(flops > previous_flops);
      CHECK(prefill > previous_prefill);
      const auto bytes = aqua::break_even_decode_bytes(c);
      if (bytes) {
        CHECK(*bytes >= previous_bytes);  // flat within a tile
        previous_bytes = *bytes;
      }
      const double ratio = aqua::decode_flop_ratio(c, 4096);
      CHECK(ratio < previous_ratio);
      previous_flops = flops;
      previous_prefill = prefill;
      previous_ratio = ratio;
    }
  }
}

TEST_CASE("k = d never breaks even, in FLOPs, bytes or prefill", "[cost_model]") {
  for (std::int64_t d : {1, 64, 128, 256})
    for (auto kp :
         {key_projection_cost::amortised, key_projection_cost::per_query, key_projection_cost::per_new_key})
      for (std::int64_t tile : {1, 32}) {
        CAPTURE(d, static_cast<int>(kp), tile);
        cost_config c = make_config(d, d, kp);
        c.tile = tile;
        CHECK_FALSE(aqua::break_even_decode_flops(c).has_value());
        CHECK_FALSE(aqua::break_even_decode_bytes(c).has_value());
        CHECK_FALSE(aqua::break_even_prefill_flops(c).has_value());
        CHECK_FALSE(aqua::break_even_flops_closed_form(d, d, kp).has_value());
        CHECK_FALSE(aqua::break_even_prefill_flops_closed_form(d, d).has_value());
        CHECK(aqua::decode_flop_ratio(c, 1e9) < 1);
        c.projection_elem_bytes = 0;  // even with P free, reading the same bytes is not cheaper
        CHECK_FALSE(aqua::break_even_decode_bytes(c).has_value());
      }
}

TEST_CASE("an H2O budget below the crossing means never breaking even", "[cost_model]") {
  cost_config c = make_config(128, 96);  // crosses at 512
  c.token_budget = 400;
  CHECK_FALSE(aqua::break_even_decode_flops(c).has_value());
  CHECK(aqua::dense_decode_cost(c, 100000).flops() == aqua::dense_decode_cost(c, 400).flops());
  c.token_budget = 2048;
  CHECK(*aqua::break_even_decode_flops(c) == Approx(512).epsilon(1e-9));
  c.token_budget = 512;  // costs equal from 512 on: never strictly cheaper
  CHECK_FALSE(aqua::break_even_decode_flops(c).has_value());
}

TEST_CASE("KV-cache bytes per token for dense, AQUA, truncated and an H2O budget", "[cost_model]") {
  cost_config c = make_config(128, 32);  // Llama-3.1-8B layer: 8 KV heads, fp16 cache
  c.hq = 32;
  c.hkv = 8;
  c.elem_bytes = 2;
  CHECK(aqua::dense_kv_bytes_per_token(c) == 4096);
  CHECK(aqua::aqua_kv_bytes_per_token(c) == 4096);  // projected keys replace the keys
  c.r = 64;
  CHECK(aqua::aqua_kv_bytes_per_token(c) == 3072);  // 8 * (64 + 128) * 2
  auto f = aqua::kv_cache_bytes(c, 32768);
  CHECK(f.tokens_kept == 32768);
  CHECK(f.dense_bytes == 32768.0 * 4096);
  CHECK(f.aqua_bytes == 32768.0 * 3072);
  CHECK(f.projection_bytes == 8.0 * 128 * 64 * 4);  // P truncated to d x r
  c.token_budget = 1024;
  f = aqua::kv_cache_bytes(c, 32768);
  CHECK(f.tokens_kept == 1024);
  CHECK(f.dense_bytes == 1024.0 * 4096);
  CHECK(f.aqua_bytes == 1024.0 * 3072);
  CHECK(aqua::kv_cache_bytes(c, 100).tokens_kept == 100);
}

TEST_CASE("cost model rejects invalid arguments naming the argument and value", "[cost_model]") {
  const auto rejects = [](cost_config c, const std::string& text) {
    CAPTURE(text);
    CHECK_THROWS_AS(aqua::break_even_decode_flops(c), aqua::error);
    CHECK_THROWS_WITH(aqua::break_even_decode_flops(c), Contains(text));
  };
  cost_config c = make_config(128, 32);
  {
    auto b = c;
    b.d = 0;
    rejects(b, "aqua::break_even_decode_flops: d = 0");
  }
  {
    auto b = c;
    b.k = 0;
    rejects(b, "k = 0 must be in [1, 128]");
  }
  {
    auto b = c;
    b.k = 129;
    rejects(b, "k = 129");
  }
  {
    auto b = c;
    b.r = 16;
    rejects(b, "k = 32 must be in [1, 16]");
  }
  {
    auto b = c;
    b.r = 200;
    rejects(b, "r = 200");
  }
  {
    auto b = c;
    b.r = -1;
    rejects(b, "r = -1");
  }
  {
    auto b = c;
    b.hq = 0;
    rejects(b, "hq = 0");
  }
  {
    auto b = c;
    b.hkv = 0;
    rejects(b, "hkv = 0");
  }
  {
    auto b = c;
    b.hq = 6;
    b.hkv = 4;
    rejects(b, "hq = 6 must be a multiple of hkv = 4");
  }
  {
    auto b = c;
    b.tile = 0;
    rejects(b, "tile = 0");
  }
  {
    auto b = c;
    b.elem_bytes = 0;
    rejects(b, "elem_bytes = 0");
  }
  {
    auto b = c;
    b.elem_bytes = std::numeric_limits<double>::infinity();
    rejects(b, "elem_bytes = inf");
  }
  {
    auto b = c;
    b.projection_elem_bytes = -1;
    rejects(b, "projection_elem_bytes = -1");
  }
  {
    auto b = c;
    b.union_spread = 1.5;
    rejects(b, "union_spread = 1.5");
  }
  {
    auto b = c;
    b.union_spread = std::numeric_limits<double>::quiet_NaN();
    rejects(b, "union_spread = nan");
  }
  {
    auto b = c;
    b.selection_flops_per_dim = -2;
    rejects(b, "selection_flops_per_dim = -2");
  }
  {
    auto b = c;
    b.token_budget = -5;
    rejects(b, "token_budget = -5");
  }
  {
    auto b = c;
    b.key_projection = static_cast<key_projection_cost>(7);
    rejects(b, "key_projection = 7");
  }
  {
    auto b = c;
    b.sharing = static_cast<selection_sharing>(9);
    rejects(b, "sharing = 9");
  }

  CHECK_THROWS_WITH(aqua::dense_decode_cost(c, -1), Contains("aqua::dense_decode_cost: n = -1"));
  CHECK_THROWS_WITH(aqua::aqua_decode_cost(c, std::numeric_limits<double>::quiet_NaN()),
                    Contains("aqua::aqua_decode_cost: n = nan"));
  CHECK_THROWS_WITH(aqua::aqua_prefill_cost(c, 10, 20),
                    Contains("m = 20 new queries exceed the context n = 10"));
  CHECK_THROWS_WITH(aqua::dense_prefill_cost(c, 10, -1), Contains("m = -1"));
  CHECK_THROWS_WITH(aqua::kv_cache_bytes(c, -3), Contains("aqua::kv_cache_bytes: n = -3"));
  CHECK_THROWS_WITH(aqua::break_even_flops_closed_form(64, 65, key_projection_cost::amortised),
                    Contains("k = 65 must be in [1, d = 64]"));
  CHECK_THROWS_WITH(aqua::break_even_flops_closed_form(0, 1, key_projection_cost::amortised),
                    Contains("d = 0"));
  CHECK_THROWS_WITH(aqua::break_even_flops_closed_form(64, 8, key_projection_cost::per_new_key, 0),
                    Contains("group = 0"));
}

TEST_CASE("prefill costs count causal query-key pairs", "[cost_model]") {
  // m = 3 new queries over n = 5 tokens, causal: they see 3, 4 and 5 keys = 12 pairs.
  cost_config c = make_config(8, 2);
  c.include_values = false;
  CHECK(aqua::dense_prefill_cost(c, 5, 3).score_flops == 2.0 * 12 * 8);
  CHECK(aqua::dense_prefill_cost(c, 5, 3, false).score_flops == 2.0 * 15 * 8);
  const auto a = aqua::aqua_prefill_cost(c, 5, 3);
  CHECK(a.score_flops == 2.0 * 12 * 2);
  CHECK(a.projection_flops == 3.0 * 2 * 64);
  CHECK(a.key_bytes == 5.0 * 8 * 4);  // every stored tile, once
}

TEST_CASE("a truncated cache charges d x r projections, not d x d", "[cost_model]") {
  // d = 8, r = 4, k = 2, N = 10, one head, T = 1, fp32: P is 8 x 4, so q~ = q P is 2 * 8 * 4 FLOPs
  // and reading P is 8 * 4 * 4 bytes; the scores and the values do not depend on r.
  cost_config c = make_config(8, 2);
  c.r = 4;
  c.tile = 1;
  auto a = aqua::aqua_decode_cost(c, 10);
  CHECK(a.projection_flops == 64);
  CHECK(a.projection_bytes == 128);
  CHECK(a.score_flops == 40);
  CHECK(a.value_flops == 160);
  CHECK(a.key_bytes == 80);  // 10 tokens * 2 dims * 4 bytes
  c.key_projection = key_projection_cost::per_query;
  CHECK(aqua::aqua_decode_cost(c, 10).projection_flops == 128);  // the key projected onto 4 dims too
  c.key_projection = key_projection_cost::amortised;
  const auto pre = aqua::aqua_prefill_cost(c, 10, 3, false);
  CHECK(pre.projection_flops == 3 * 64);
  CHECK(pre.projection_bytes == 128);
  CHECK(pre.key_bytes == 10 * 4 * 4);  // every stored dim, and only those

  // Break-even: the fixed cost d r replaces d^2, so N* = d r / (d - k), written out here.
  cost_config t = make_config(128, 32);
  t.r = 64;
  const double expected = 128.0 * 64 / (128 - 32);
  CHECK(*aqua::break_even_decode_flops(t) == Approx(expected).epsilon(1e-9));
  CHECK(*aqua::break_even_flops_closed_form(128, 32, key_projection_cost::amortised, 1, 64) ==
        Approx(expected));
  t.key_projection = key_projection_cost::per_query;
  CHECK(*aqua::break_even_decode_flops(t) == Approx(2 * expected).epsilon(1e-9));
  // Bytes: d r e_P / ((d - D) e) with D = 32 (k = 32 in one tile of 32).
  t.key_projection = key_projection_cost::amortised;
  CHECK(*aqua::break_even_decode_bytes(t) == Approx(128.0 * 64 / (128 - 32)).epsilon(1e-9));
  CHECK(*aqua::break_even_bytes_closed_form(t) == Approx(128.0 * 64 / (128 - 32)));
  // Truncation never makes the model more expensive than the untruncated cache.
  cost_config full = make_config(128, 32);
  CHECK(*aqua::break_even_decode_flops(t) < *aqua::break_even_decode_flops(full));
  CHECK_THROWS_WITH(aqua::break_even_flops_closed_form(128, 80, key_projection_cost::amortised, 1, 64),
                    Contains("k = 80"));
}
