// File helpers shared by the tests that write files: a scratch directory removed at scope exit,
// and whole-file byte reads and writes.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace aqua_test {

/// A fresh directory under the system temp dir, removed with its contents at scope exit. The name
/// holds the process id and a counter, so concurrent test processes (ctest -j) never share one.
struct temp_dir {
  std::filesystem::path path;

  explicit temp_dir(const std::string& prefix = "aqua_test") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           (prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

/// Writes `bytes` as the whole content of `path`.
inline void write_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
inline void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  write_bytes(path, std::string_view(bytes.data(), bytes.size()));
}

/// The whole content of `path`, as a std::string or a std::vector<char>.
template <class Bytes = std::string>
Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace aqua_test
