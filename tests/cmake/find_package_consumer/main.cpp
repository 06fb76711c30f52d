// A consumer of aqua: include the umbrella header, run exact attention on its own buffers.
#include <aqua/aqua.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int hq = 4, hkv = 2, n = 5, d = 8;
  std::vector<float> q(hq * d, 0.1f), k(hkv * n * d), v(hkv * n * d), out(hq * d);
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = std::sin(0.3f * static_cast<float>(i));
    v[i] = static_cast<float>(i % 7);
  }
  aqua::dense_decode<float>(aqua::make_view(q.data(), hq, d), aqua::make_view(k.data(), hkv, n, d),
                            aqua::make_view(v.data(), hkv, n, d), aqua::make_view(out.data(), hq, d));
  for (float x : out)
    if (!std::isfinite(x) || x < 0.0f || x > 6.0f) return 1;  // a convex mix of values in [0, 6]
  std::printf("aqua %s consumer ok: out[0] = %g\n", AQUA_VERSION_STRING, static_cast<double>(out[0]));
  return 0;
}
