#include <aqua/aqua.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const aqua::index_t hq = 8, hkv = 2, d = 64, n = 2048, m = 64;  // one layer, GQA groups of 4
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> q(hq * d), q3(hq * m * d), k(hkv * n * d), v(k.size()), out(q.size()), out3(q3.size());
  for (auto* x : {&q, &q3, &k, &v})  // energy decaying over the dims, as in real queries and keys
    for (std::size_t i = 0; i < x->size(); ++i) (*x)[i] = normal(rng) * std::exp(-float(i % d) / 16);
  auto qv = aqua::make_view(q.data(), hq, d), outv = aqua::make_view(out.data(), hq, d);
  auto q3v = aqua::make_view(q3.data(), hq, m, d), out3v = aqua::make_view(out3.data(), hq, m, d);

  // Offline: calibrate one orthogonal projection per (layer, KV head); save it, load it back.
  aqua::calibrator cal(/*layers=*/1, hq, hkv, d);
  cal.add_queries(/*layer=*/0, q3v);  // queries [Hq, rows, d] of calibration text
  aqua::save_projection_set("api_tour.safetensors", cal.finalize());
  const aqua::projection_set set = aqua::load_projection_set("api_tour.safetensors");

  // Online: layer 0's projected KV cache (dimension tiles); append projects the keys once.
  aqua::kv_cache cache(set, /*layer=*/0);
  cache.append(aqua::make_view(k.data(), hkv, n, d), aqua::make_view(v.data(), hkv, n, d));
  aqua::aqua_options opt;                              // mode: group (default), per_head, tile
  const auto top16 = aqua::selection_spec::top_k(16);  // or fraction(0.25), energy(0.9)
  aqua::aqua_decode(qv, cache, top16, outv, opt);      // one new token per query head
  aqua::aqua_prefill(q3v, cache, top16, out3v, opt);   // the last m tokens' queries, causal
  const aqua::attention_quality quality = aqua::aqua_decode_quality(qv, cache, top16, opt);

  // H2O: decode steps accumulate attention; evict keeps B = 512 tokens, the W = 256 newest among them.
  aqua::h2o_policy h2o(hkv, {/*budget=*/512, /*recent=*/256, /*slack=*/0});
  h2o.decode(qv, cache, top16, outv, opt);
  h2o.evict(cache);
  std::printf("AQUA k = 16 of %ld: rel. L2 error %.4f, top-1 agreement %.2f; %ld tokens after H2O\n", long(d),
              quality.rel_l2_error, quality.top1_agreement, long(cache.size()));
}
