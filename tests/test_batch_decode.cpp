// Batched decode (aqua_decode_batch, dense_decode_batch): S sequences of unequal lengths in one
// call. Each sequence's output, token probabilities and log-sum-exp are held against the double
// oracle of that sequence alone, and against aqua_decode of that sequence alone; the work split
// (detail::plan_pieces) covers every token once and balances the workers; bad batches are errors
// that name the sequence.
#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "oracle_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

/// S layers with the same shape and bases (the caches of one model layer), of lengths `lengths`.
struct batch {
  index_t hq, hkv, d, count;
  std::vector<std::unique_ptr<aqua_test::random_layer>> layers;
  std::vector<const aqua::kv_cache*> caches;
  std::vector<float> q;  // [S, hq, d]

  batch(index_t hq_, index_t hkv_, index_t d_, const std::vector<index_t>& lengths,
        aqua_test::random_layer::options opt = {})
      : hq(hq_), hkv(hkv_), d(d_), count(index_t(lengths.size())), q(std::size_t(count * hq_ * d_)) {
    for (std::size_t s = 0; s < lengths.size(); ++s) {
      opt.seed = unsigned(300 + 10 * s);
      layers.push_back(std::make_unique<aqua_test::random_layer>(hq, hkv, d, lengths[s], opt));
      caches.push_back(&layers.back()->cache);
    }
  }
  aqua::tensor3_view<const float> qv() const { return aqua::make_view(q.data(), count, hq, d); }
  aqua::vector_view<const aqua::kv_cache* const> cv() const { return aqua::make_view(caches.data(), count); }
  const float* q_of(index_t s) const { return q.data() + s * hq * d; }
};

}  // namespace

TEST_CASE(
    "batched AQUA decode of unequal sequences agrees with each sequence's oracle and with aqua_decode alone",
    "[batch][decode][oracle][threads]") {
  const index_t g = GENERATE(1, 4);
  const index_t hkv = 2, hq = g * hkv, d = 64;
  CAPTURE(g);
  // One token, a partial block, a partial chunk, several chunks, one chunk plus one token.
  batch B(hq, hkv, d, {1, 17, 300, 1000, 129});
  std::vector<aqua_oracle::oracle> oracles;
  for (const auto& L : B.layers) oracles.emplace_back(aqua_test::oracle_inputs(*L));
  using top = aqua::selection_spec;
  aqua_test::both_paths([&] {
    for (auto mode : aqua_test::all_modes)
      for (const auto& spec : {top::top_k(d / 4), top::top_k(d), top::energy(0.8)}) {
        CAPTURE(aqua_test::mode_name(mode), aqua_test::spec_name(spec));
        // Queries clear of selection ties for every sequence's oracle.
        std::vector<aqua_oracle::result> want;
        for (index_t s = 0; s < B.count; ++s) {
          std::vector<float> qs(std::size_t(hq * d));
          want.push_back(
              aqua_test::clear_decode_queries(oracles[std::size_t(s)], qs, d, unsigned(31 + s), mode, spec));
          std::copy(qs.begin(), qs.end(), B.q.begin() + s * hq * d);
        }
        for (int threads : {1, 2, 3}) {
          CAPTURE(threads);
          std::vector<float> out(B.q.size(), std::numeric_limits<float>::quiet_NaN());
          std::vector<float> lse(std::size_t(B.count * hq), std::numeric_limits<float>::quiet_NaN());
          std::vector<std::vector<float>> probs;
          std::vector<aqua::matrix_view<float>> prob_views;
          for (index_t s = 0; s < B.count; ++s) {
            probs.emplace_back(std::size_t(hkv * B.caches[std::size_t(s)]->size()), -1.0f);
            prob_views.push_back(aqua::make_view(probs.back().data(), hkv, B.caches[std::size_t(s)]->size()));
          }
          aqua::aqua_options opt;
          opt.mode = mode;
          opt.threads = threads;
          aqua::batch_decode_outputs extra;
          extra.token_probs =
              aqua::make_view(static_cast<const aqua::matrix_view<float>*>(prob_views.data()), B.count);
          extra.lse = aqua::make_view(lse.data(), B.count, hq);
          aqua::aqua_decode_batch(B.qv(), B.cv(), spec, aqua::make_view(out.data(), B.count, hq, d), opt,
                                  extra);
          for (index_t s = 0; s < B.count; ++s) {
            CAPTURE(s);
            const auto& res = want[std::size_t(s)];
            aqua_test::bound_report rep;
            for (index_t h = 0; h < hq; ++h)
              for (index_t c = 0; c < d; ++c)
                rep.add(double(out[std::size_t((s * hq + h) * d + c)]), res.row(h).out[std::size_t(c)],
                        res.row(h).tol[std::size_t(c)], "out", h, c);
            const index_t n = B.caches[std::size_t(s)]->size();
            for (index_t kv = 0; kv < hkv; ++kv)
              for (index_t j = 0; j < n; ++j)
                rep.add(double(probs[std::size_t(s)][std::size_t(kv * n + j)]),
                        res.token_probs[std::size_t(kv)][std::size_t(j)],
                        res.token_prob_tol[std::size_t(kv)][std::size_t(j)], "token_probs", kv, j);
            INFO(rep.summary());
            CHECK(rep.outside == 0);
            // The same sequence decoded alone: bitwise equal with one worker (the same pieces in
            // the same order), within float rounding with more.
            std::vector<float> alone(static_cast<std::size_t>(hq * d)),
                alone_lse(static_cast<std::size_t>(hq));
            aqua::aqua_options one = opt;
            one.lse = aqua::make_view(alone_lse.data(), hq);
            aqua::aqua_decode(aqua::make_view(B.q_of(s), hq, d), *B.caches[std::size_t(s)], spec,
                              aqua::make_view(alone.data(), hq, d), one);
            const std::vector<float> got(out.begin() + s * hq * d, out.begin() + (s + 1) * hq * d);
            const std::vector<float> got_lse(lse.begin() + s * hq, lse.begin() + (s + 1) * hq);
            if (threads == 1) {
              CHECK(aqua_test::bitwise_equal(got, alone));
              CHECK(aqua_test::bitwise_equal(got_lse, alone_lse));
            }
            for (index_t h = 0; h < hq; ++h)
              CHECK(std::abs(got_lse[std::size_t(h)] - alone_lse[std::size_t(h)]) <=
                    1e-5 * (1 + std::abs(alone_lse[std::size_t(h)])));
          }
        }
      }
  });
}

TEST_CASE("batched dense decode over caches is dense_decode of each cache, exact attention at full rank",
          "[batch][decode][oracle]") {
  const index_t hkv = 2, hq = 6, d = 40;
  batch B(hq, hkv, d, {250, 3, 64, 700});
  aqua_test::fill_normal(B.q, 77);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    aqua::attention_options opt;
    opt.threads = threads;
    std::vector<float> out(B.q.size());
    aqua::dense_decode_batch(B.qv(), B.cv(), aqua::make_view(out.data(), B.count, hq, d), opt);
    for (index_t s = 0; s < B.count; ++s) {
      CAPTURE(s);
      const auto& L = *B.layers[std::size_t(s)];
      const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
      const auto res = o.decode(B.q_of(s), aqua_oracle::mode::group,
                                aqua_test::oracle_spec(aqua::selection_spec::top_k(d)));
      aqua_test::bound_report rep;
      for (index_t h = 0; h < hq; ++h)
        for (index_t c = 0; c < d; ++c)
          rep.add(double(out[std::size_t((s * hq + h) * d + c)]), res.row(h).out[std::size_t(c)],
                  res.row(h).tol[std::size_t(c)], "out", h, c);
      INFO(rep.summary());
      CHECK(rep.outside == 0);
      std::vector<float> alone(static_cast<std::size_t>(hq * d));
      aqua::dense_decode(aqua::make_view(B.q_of(s), hq, d), L.cache, aqua::make_view(alone.data(), hq, d),
                         opt);
      if (threads == 1)
        CHECK(aqua_test::bitwise_equal(
            std::vector<float>(out.begin() + s * hq * d, out.begin() + (s + 1) * hq * d), alone));
    }
  }
}

TEST_CASE("the batch's work pieces cover every token of every KV head once and balance the workers",
          "[batch][decode]") {
  const index_t hkv = 2, hq = 4, d = 16;
  batch B(hq, hkv, d, {5000, 10, 10, 10, 130, 1, 2000}, {16, false, 0, 1, 1, 100});
  const index_t chunk = aqua::detail::decode_chunk;
  const int threads = GENERATE(1, 2, 3, 5, 64);
  CAPTURE(threads);
  aqua::detail::engine_workspace ws;
  std::vector<aqua::detail::planned_decode> jobs(B.caches.size());
  index_t total_chunks = 0;
  for (std::size_t s = 0; s < jobs.size(); ++s) {
    jobs[s].plan.hkv = hkv;
    jobs[s].plan.n = B.caches[s]->size();
    total_chunks += hkv * ((jobs[s].plan.n + chunk - 1) / chunk);
  }
  const int workers = aqua::detail::plan_pieces(jobs.data(), index_t(jobs.size()), threads, ws);
  CHECK(workers == std::min<index_t>(threads, total_chunks));
  // Stream by stream, the pieces tile [0, n) in order, on chunk boundaries.
  index_t stream = 0;
  for (std::size_t s = 0; s < jobs.size(); ++s)
    for (index_t kv = 0; kv < hkv; ++kv, ++stream) {
      index_t next = 0;
      for (index_t pc = ws.first_piece[std::size_t(stream)]; pc < ws.first_piece[std::size_t(stream + 1)];
           ++pc) {
        const auto& p = ws.pieces[std::size_t(pc)];
        CHECK(p.seq == index_t(s));
        CHECK(p.kv == kv);
        CHECK(p.t0 == next);
        CHECK(p.t0 % chunk == 0);
        CHECK(p.t1 > p.t0);
        next = p.t1;
      }
      CHECK(next == jobs[s].plan.n);
    }
  CHECK(ws.first_piece.back() == index_t(ws.pieces.size()));
  // Each worker's chunks are total / workers, rounded down or up.
  for (int w = 0; w < workers; ++w) {
    index_t chunks = 0;
    for (index_t pc = ws.worker_piece[std::size_t(w)]; pc < ws.worker_piece[std::size_t(w + 1)]; ++pc) {
      const auto& p = ws.pieces[std::size_t(pc)];
      chunks += (p.t1 - p.t0 + chunk - 1) / chunk;
    }
    CHECK(chunks >= total_chunks / workers);
    CHECK(chunks <= (total_chunks + workers - 1) / workers);
  }
  CHECK(ws.worker_piece.back() == index_t(ws.pieces.size()));
  // A stream is cut only where a worker's run ends.
  CHECK(ws.pieces.size() <= std::size_t(stream + workers - 1));
}

TEST_CASE("a bad batch is an error that names the sequence", "[batch][decode][errors]") {
  const index_t hkv = 2, hq = 4, d = 32;
  batch B(hq, hkv, d, {40, 70, 20});
  aqua_test::fill_normal(B.q, 5);
  std::vector<float> out(B.q.size());
  const auto ov = aqua::make_view(out.data(), B.count, hq, d);
  const auto spec = aqua::selection_spec::top_k(8);
  SECTION("one cache per sequence") {
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), aqua::make_view(B.caches.data(), 2), spec, ov),
                      Contains("2 caches for 3 sequences"));
  }
  SECTION("null cache") {
    B.caches[1] = nullptr;
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov), Contains("caches[1] is null"));
  }
  SECTION("empty cache") {
    const aqua::kv_cache empty(hkv, d);
    B.caches[2] = &empty;
    CHECK_THROWS_WITH(aqua::dense_decode_batch(B.qv(), B.cv(), ov),
                      Contains("sequence 2: the KV cache is empty"));
  }
  SECTION("head dim") {
    aqua_test::random_layer other(hq, hkv, 16, 10, {});
    B.caches[0] = &other.cache;
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov),
                      Contains("sequence 0: q has head dim 32 but the cache holds head dim 16"));
  }
  SECTION("output shape") {
    std::vector<float> small(std::size_t(2 * hq * d));
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, aqua::make_view(small.data(), 2, hq, d)),
                      Contains("out has shape [2, 4, 32] but q has shape [3, 4, 32]"));
  }
  SECTION("token probabilities") {
    std::vector<float> p0(std::size_t(hkv * 40)), p1(std::size_t(hkv * 69)), p2(std::size_t(hkv * 20));
    std::vector<aqua::matrix_view<float>> views{aqua::make_view(p0.data(), hkv, 40),
                                                aqua::make_view(p1.data(), hkv, 69),
                                                aqua::make_view(p2.data(), hkv, 20)};
    aqua::batch_decode_outputs extra;
    extra.token_probs = aqua::make_view(static_cast<const aqua::matrix_view<float>*>(views.data()), 3);
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov, {}, extra),
                      Contains("sequence 1: token_probs has shape [2, 69] but must be [Hkv, N] = [2, 70]"));
    extra.token_probs = aqua::make_view(static_cast<const aqua::matrix_view<float>*>(views.data()), 2);
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov, {}, extra),
                      Contains("outputs.token_probs has 2 views for 3 sequences"));
  }
  SECTION("log-sum-exp") {
    std::vector<float> lse(std::size_t(3 * hq));
    aqua::batch_decode_outputs extra;
    extra.lse = aqua::make_view(lse.data(), hq, 3);
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov, {}, extra),
                      Contains("outputs.lse has shape [4, 3] but must be [S, Hq] = [3, 4]"));
    aqua::aqua_options opt;
    opt.lse = aqua::make_view(lse.data(), hq);
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov, opt),
                      Contains("a batched decode writes its log-sum-exp to outputs.lse"));
  }
  SECTION("selection and queries") {
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), aqua::selection_spec::top_k(33), ov),
                      Contains("aqua::aqua_decode_batch"));
    B.q[std::size_t((2 * hq + 1) * d + 3)] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(B.qv(), B.cv(), spec, ov),
                      Contains("q holds a non-finite value (nan) at index [2, 1, 3]"));
  }
  SECTION("no sequences") {
    CHECK_THROWS_WITH(aqua::aqua_decode_batch(aqua::tensor3_view<const float>(B.q.data(), {0, hq, d}),
                                              aqua::make_view(B.caches.data(), 0), spec,
                                              aqua::tensor3_view<float>(out.data(), {0, hq, d})),
                      Contains("it must be [S, Hq, d] with every extent >= 1"));
  }
}
