// What an inference engine writes to adopt aqua, in one place:
//   1. its own thread pool, handed to aqua as an aqua::executor (aqua then starts no thread);
//   2. a projection file, loaded once, and one kv_cache per (layer, sequence) built from it;
//   3. each sequence's prompt through aqua_prefill, whose token probabilities seed that
//      sequence's H2O policy, so the cache is evicted right after the prompt;
//   4. decode steps of every sequence at once with aqua_decode_batch, whose per-sequence token
//      probabilities keep feeding H2O.
// The model is a stand-in (random activations whose energy decays over the dims, as in real
// heads); everything aqua sees has the shapes and the call order of a real engine's layers.
#include <aqua/aqua.hpp>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace {

/// The engine's pool (llama.cpp's threadpool, OpenMP or TBB in a real engine): workers - 1
/// threads that wait for a task; the calling thread is worker 0.
class engine_pool final : public aqua::executor {
public:
  explicit engine_pool(int workers) : workers_(workers) {
    for (int w = 1; w < workers; ++w) threads_.emplace_back([this, w] { serve(w); });
  }
  ~engine_pool() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const noexcept override { return workers_; }
  void run(int count, aqua::task_ref task) override {  // task(w) once for each w < count
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = task, count_ = count, pending_ = count - 1, ++generation_;
    }
    wake_.notify_all();
    if (count > 0) task(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ <= 0; });
  }

private:
  void serve(int w) {
    for (long seen = 0;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (w >= count_) continue;
      const aqua::task_ref task = task_;
      lock.unlock();
      task(w);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }
  int workers_, count_ = 0, pending_ = 0;
  long generation_ = 0;
  bool stop_ = false;
  aqua::task_ref task_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
};

/// Stand-in activations: [rows, d] blocks whose energy decays over the dims.
std::vector<float> activations(aqua::index_t rows, aqua::index_t d, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * std::exp(-float(i % std::size_t(d)) / 16);
  return x;
}

}  // namespace

int main() {
  using aqua::index_t;
  const index_t layers = 2, hq = 8, hkv = 2, d = 64, steps = 16;
  const std::vector<index_t> prompts{300, 1000, 64, 700};  // one prompt length per sequence
  const index_t count = index_t(prompts.size());
  std::mt19937 rng(7);
  engine_pool pool(2);

  // Offline, once per model: calibrate, save; at start-up the engine loads the file.
  aqua::calibrator cal(layers, hq, hkv, d);
  for (index_t l = 0; l < layers; ++l)
    cal.add_queries(l, aqua::make_view(activations(hq * 512, d, rng).data(), hq, 512, d));
  aqua::save_projection_set("engine.safetensors", cal.finalize(pool));
  const aqua::projection_set set = aqua::load_projection_set("engine.safetensors");

  // Per (layer, sequence): a cache of projected keys and an H2O policy keeping 256 tokens per head.
  std::vector<std::vector<aqua::kv_cache>> caches(static_cast<std::size_t>(layers));
  std::vector<std::vector<aqua::h2o_policy>> h2o(static_cast<std::size_t>(layers));
  for (index_t l = 0; l < layers; ++l)
    for (index_t s = 0; s < count; ++s) {
      caches[std::size_t(l)].emplace_back(set, l);
      h2o[std::size_t(l)].emplace_back(hkv, aqua::h2o_options{/*budget=*/256, /*recent=*/64, /*slack=*/0});
    }
  aqua::aqua_options opt;  // group mode; every call runs on the engine's pool
  opt.exec = &pool;
  aqua::aqua_workspace workspace;  // reused by every call: no allocation once the shapes are seen
  opt.workspace = &workspace;
  const auto top16 = aqua::selection_spec::top_k(16);

  // Prefill: the prompt's keys and values enter the cache, its queries attend causally; the
  // attention of its last 32 queries seeds H2O, and the cache is evicted to the budget at once.
  for (index_t s = 0; s < count; ++s)
    for (index_t l = 0; l < layers; ++l) {
      const index_t m = prompts[std::size_t(s)];
      aqua::kv_cache& cache = caches[std::size_t(l)][std::size_t(s)];
      const auto k = activations(hkv * m, d, rng), v = activations(hkv * m, d, rng),
                 q = activations(hq * m, d, rng);
      cache.append(aqua::make_view(k.data(), hkv, m, d), aqua::make_view(v.data(), hkv, m, d));
      std::vector<float> out(q.size());
      h2o[std::size_t(l)][std::size_t(s)].prefill(aqua::make_view(q.data(), hq, m, d), cache, top16,
                                                  aqua::make_view(out.data(), hq, m, d), opt,
                                                  /*last_queries=*/32);
      h2o[std::size_t(l)][std::size_t(s)].evict(cache);
    }

  // Decode: per step and layer, every sequence appends its new token, then one batched call
  // attends all of them; each sequence's token probabilities go to its policy, which evicts.
  std::vector<float> out(static_cast<std::size_t>(count * hq * d)), exact(out.size());
  double error = 0;
  for (index_t step = 0; step < steps; ++step)
    for (index_t l = 0; l < layers; ++l) {
      std::vector<const aqua::kv_cache*> batch;
      std::vector<std::vector<float>> probs(static_cast<std::size_t>(count));
      std::vector<aqua::matrix_view<float>> prob_views;
      for (index_t s = 0; s < count; ++s) {
        aqua::kv_cache& cache = caches[std::size_t(l)][std::size_t(s)];
        const auto k = activations(hkv, d, rng), v = activations(hkv, d, rng);
        cache.append(aqua::make_view(k.data(), hkv, 1, d), aqua::make_view(v.data(), hkv, 1, d));
        batch.push_back(&cache);
        probs[std::size_t(s)].resize(static_cast<std::size_t>(hkv * cache.size()));
        prob_views.push_back(aqua::make_view(probs[std::size_t(s)].data(), hkv, cache.size()));
      }
      const auto q = activations(count * hq, d, rng);
      const auto qv = aqua::make_view(q.data(), count, hq, d);
      const auto caches_view = aqua::make_view(batch.data(), count);
      aqua::batch_decode_outputs outputs;
      outputs.token_probs =
          aqua::make_view(static_cast<const aqua::matrix_view<float>*>(prob_views.data()), count);
      aqua::aqua_decode_batch(qv, caches_view, top16, aqua::make_view(out.data(), count, hq, d), opt,
                              outputs);
      for (index_t s = 0; s < count; ++s) {
        h2o[std::size_t(l)][std::size_t(s)].accumulate(prob_views[std::size_t(s)]);
        h2o[std::size_t(l)][std::size_t(s)].evict(caches[std::size_t(l)][std::size_t(s)]);
      }
      if (step == steps - 1 && l == layers - 1) {  // AQUA against exact attention over the same caches
        aqua::dense_decode_batch(qv, caches_view, aqua::make_view(exact.data(), count, hq, d), opt);
        double diff = 0, norm = 0;
        for (std::size_t i = 0; i < out.size(); ++i) {
          diff += double(out[i] - exact[i]) * double(out[i] - exact[i]);
          norm += double(exact[i]) * double(exact[i]);
        }
        error = std::sqrt(diff / norm);
      }
    }
  std::printf(
      "engine: %ld sequences x %ld layers, %ld batched decode steps on %d workers; tokens per KV head:",
      long(count), long(layers), long(steps), pool.workers());
  for (index_t s = 0; s < count; ++s) std::printf(" %ld", long(caches[0][std::size_t(s)].size()));
  std::printf("; last step AQUA k = 16 of %ld against dense: rel. L2 error %.4f\n", long(d), error);
}
