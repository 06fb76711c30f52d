// Where the llama2.c data lives (stories260K/, text/): the data directory and the files looked up
// in it. Apart from llama2c.hpp so that the command lines (llama_cli.hpp) get it without the
// transformer, whose headers cost a tool's parser several seconds of compiling.
#pragma once

#include <aqua/config.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace llama2c {

inline bool is_directory(const std::string& path) {
  std::error_code ec;
  return !path.empty() && std::filesystem::is_directory(path, ec);
}

/// The data directory: `flag` when given, then $AQUA_DATA_DIR, then ../shared/data relative to
/// the current directory, then relative to `repo_root` (when known). Empty when none exists; a
/// flag or variable naming a missing directory is an error rather than a silent fallback.
inline std::string resolve_data_dir(const std::string& flag, const std::string& repo_root) {
  if (!flag.empty()) {
    AQUA_CHECK(is_directory(flag), "llama2c: --data-dir '", flag, "' is not a directory");
    return flag;
  }
  if (const char* env = std::getenv("AQUA_DATA_DIR"); env != nullptr && *env != '\0') {
    AQUA_CHECK(is_directory(env), "llama2c: AQUA_DATA_DIR='", env, "' is not a directory");
    return env;
  }
  if (is_directory("../shared/data")) return "../shared/data";
  if (!repo_root.empty() && is_directory(repo_root + "/../shared/data")) return repo_root + "/../shared/data";
  return {};
}

inline bool exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

/// `path` unless it is missing, relative, and present in the data directory.
inline std::string in_data_dir(const std::string& path, const std::string& data_dir) {
  if (exists(path) || data_dir.empty() || path.empty() || path[0] == '/') return path;
  const std::string candidate = data_dir + "/" + path;
  return exists(candidate) ? candidate : path;
}

}  // namespace llama2c
