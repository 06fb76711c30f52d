// Shared by the libFuzzer targets: the loaders take paths, so each input is written to a
// per-process temporary file first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

namespace aqua_fuzz {

/// Writes the input to a file private to this process and returns its path.
inline const std::string& write_input(const std::uint8_t* data, std::size_t size) {
  // Removed when the fuzzer exits normally (libFuzzer ends with exit(), running static destructors).
  struct temp_file {
    std::string path;
    ~temp_file() { std::remove(path.c_str()); }
  };
  static const temp_file file{[] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/aqua_fuzz_" + std::to_string(::getpid()) + ".bin";
  }()};
  const std::string& path = file.path;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();
  return path;
}

}  // namespace aqua_fuzz
