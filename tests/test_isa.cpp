// The one CPU probe and the process-wide ISA cap: supported_isa() against the kernel's own account
// of the CPU (/proc/cpuinfo), active_isa() as the narrower of the two, and decode under each cap;
// the decode prefetch setting, which changes speed only.
#include <aqua/attention.hpp>
#include <aqua/calibrate.hpp>
#include <aqua/isa.hpp>

#include <catch2/catch.hpp>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "kernel_support.hpp"
#include "skip_support.hpp"

namespace {

/// The vendor_id of the first processor in /proc/cpuinfo (empty when there is none).
std::string cpuinfo_vendor() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("vendor_id", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string vendor;
    words >> vendor;
    return vendor;
  }
  return {};
}

/// The feature flags of the first processor in /proc/cpuinfo (empty when there is none).
std::set<std::string> cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

}  // namespace

TEST_CASE("supported_isa reports what the kernel says the CPU has", "[isa]") {
  const auto flags = cpuinfo_flags();
  if (flags.empty()) {
    aqua_test::skip_case("no /proc/cpuinfo flags line to compare with (not Linux on x86)");
    return;
  }
  const bool avx2 = flags.count("avx2") && flags.count("fma") && flags.count("f16c");
  const aqua::isa want = !avx2                    ? aqua::isa::portable
                         : flags.count("avx512f") ? aqua::isa::avx512
                                                  : aqua::isa::avx2;
  CAPTURE(aqua::isa_name(want));
  CHECK(aqua::supported_isa() == want);
}

TEST_CASE("set_max_isa caps active_isa, returns the previous cap, and never widens past the CPU", "[isa]") {
  const aqua_test::hook_guard reset;
  const aqua::isa supported = aqua::supported_isa();
  CHECK(aqua::max_isa() == aqua::isa::avx512);  // no cap by default
  CHECK(aqua::active_isa() == supported);
  CHECK(aqua::set_max_isa(aqua::isa::portable) == aqua::isa::avx512);
  CHECK(aqua::active_isa() == aqua::isa::portable);
  CHECK(aqua::set_max_isa(aqua::isa::avx2) == aqua::isa::portable);
  CHECK(aqua::active_isa() == (supported == aqua::isa::portable ? aqua::isa::portable : aqua::isa::avx2));
  aqua::set_max_isa(aqua::isa::avx512);
  CHECK(aqua::active_isa() == supported);
  CHECK(std::string(aqua::isa_name(aqua::isa::avx512)) == "avx512");
  CHECK(std::string(aqua::isa_name(aqua::isa::avx2)) == "avx2");
  CHECK(std::string(aqua::isa_name(aqua::isa::portable)) == "portable");
}

TEST_CASE("decode under every cap is the same attention to float rounding", "[isa]") {
  // The portable path sums in another order than the SIMD ones, so the paths agree to float
  // rounding (AVX-512 and AVX2 bit for bit: test_aqua_attention.cpp, test_storage.cpp).
  const aqua_test::hook_guard reset;
  const aqua_test::random_layer L(8, 2, 64, 300, {16, true, 0, 1, 5, 100});
  std::vector<float> ref(std::size_t(8 * 64)), out(ref.size());
  aqua::aqua_decode(L.qv(), L.cache, aqua::selection_spec::top_k(64), aqua::make_view(ref.data(), 8, 64));
  for (aqua::isa cap : {aqua::isa::avx2, aqua::isa::portable}) {
    aqua::set_max_isa(cap);
    CAPTURE(aqua::isa_name(aqua::active_isa()));
    aqua::aqua_decode(L.qv(), L.cache, aqua::selection_spec::top_k(64), aqua::make_view(out.data(), 8, 64));
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i)
      worst = aqua_test::max_or_nan(worst, std::abs(ref[i] - out[i]));
    CHECK(worst < 1e-5);
  }
}

TEST_CASE(
    "decode prefetch: automatic is l2 on AMD and l1 elsewhere; set_decode_prefetch returns the previous",
    "[isa]") {
  const aqua_test::hook_guard reset;
  const std::string vendor = cpuinfo_vendor();
  CAPTURE(vendor);
  if (vendor.empty()) {
    aqua_test::skip_case("no /proc/cpuinfo vendor_id line to compare with (not Linux on x86)");
  } else {
    CHECK(aqua::active_decode_prefetch() ==
          (vendor == "AuthenticAMD" ? aqua::decode_prefetch::l2 : aqua::decode_prefetch::l1));
  }
  CHECK(aqua::set_decode_prefetch(aqua::decode_prefetch::l1) == aqua::decode_prefetch::automatic);
  CHECK(aqua::active_decode_prefetch() == aqua::decode_prefetch::l1);
  CHECK(aqua::set_decode_prefetch(aqua::decode_prefetch::l2) == aqua::decode_prefetch::l1);
  CHECK(aqua::active_decode_prefetch() == aqua::decode_prefetch::l2);
  CHECK(std::string(aqua::decode_prefetch_name(aqua::decode_prefetch::l2)) == "l2");
  CHECK(std::string(aqua::decode_prefetch_name(aqua::decode_prefetch::l1)) == "l1");
  CHECK(std::string(aqua::decode_prefetch_name(aqua::decode_prefetch::automatic)) == "automatic");
}

TEST_CASE("decode results are bitwise the same under l1 and l2 prefetch, every mode and storage", "[isa]") {
  const aqua_test::hook_guard reset;
  for (aqua::storage_type st : {aqua::storage_type::f32, aqua::storage_type::bf16, aqua::storage_type::f16}) {
    aqua_test::random_layer::options o;
    o.key_type = o.value_type = st;
    const aqua_test::random_layer L(8, 2, 64, 1000, o);
    for (aqua::selection_mode mode :
         {aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile}) {
      CAPTURE(aqua::storage_name(st), int(mode));
      std::vector<float> a(std::size_t(8 * 64)), b(a.size());
      aqua::aqua_options opt;
      opt.mode = mode;
      aqua::set_decode_prefetch(aqua::decode_prefetch::l1);
      aqua::aqua_decode(L.qv(), L.cache, 24, aqua::make_view(a.data(), 8, 64), opt);
      aqua::set_decode_prefetch(aqua::decode_prefetch::l2);
      aqua::aqua_decode(L.qv(), L.cache, 24, aqua::make_view(b.data(), 8, 64), opt);
      CHECK(a == b);
      aqua::set_decode_prefetch(aqua::decode_prefetch::l1);
      aqua::dense_decode(L.qv(), L.cache, aqua::make_view(a.data(), 8, 64));
      aqua::set_decode_prefetch(aqua::decode_prefetch::l2);
      aqua::dense_decode(L.qv(), L.cache, aqua::make_view(b.data(), 8, 64));
      CHECK(a == b);
    }
  }
}

TEST_CASE("dense decode over engine buffers is bitwise the same under l1 and l2 prefetch, both layouts",
          "[isa]") {
  const aqua_test::hook_guard reset;
  const aqua::index_t hq = 8, hkv = 2, d = 64, n = 700;
  std::vector<float> q(std::size_t(hq * d)), k(std::size_t(hkv * n * d)), v(k.size());
  aqua_test::fill_normal(q, 3);
  aqua_test::fill_normal(k, 4);
  aqua_test::fill_normal(v, 5);
  const auto qv = aqua::make_view<const float>(q.data(), hq, d);
  // [Hkv, N, d] and the same buffer read as [N][Hkv][d] (heads interleaved per token).
  const aqua::tensor3_view<const float> head_major_k(k.data(), {hkv, n, d}),
      head_major_v(v.data(), {hkv, n, d});
  const aqua::tensor3_view<const float> inter_k(k.data(), {hkv, n, d}, {d, hkv * d, 1}),
      inter_v(v.data(), {hkv, n, d}, {d, hkv * d, 1});
  for (int layout = 0; layout < 2; ++layout) {
    CAPTURE(layout);
    const auto& kk = layout ? inter_k : head_major_k;
    const auto& vv = layout ? inter_v : head_major_v;
    std::vector<float> a(std::size_t(hq * d)), b(a.size());
    aqua::set_decode_prefetch(aqua::decode_prefetch::l1);
    aqua::dense_decode(qv, kk, vv, aqua::make_view(a.data(), hq, d));
    aqua::set_decode_prefetch(aqua::decode_prefetch::l2);
    aqua::dense_decode(qv, kk, vv, aqua::make_view(b.data(), hq, d));
    CHECK(a == b);
  }
}
