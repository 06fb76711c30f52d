// Command-line helpers shared by the tools (aqua_decode, aqua_compare, aqua_llama, aqua_calibrate,
// aqua_cost, ...): CLI11 (Debian's libcli11-dev) with strict numbers, ranges, a bounded thread
// count, output paths checked before any work, and one exit-code convention. Not part of the
// library: the headers in include/ never include CLI11.
//
// Exit status of every tool: 0 success (also --help), 1 runtime error (an input that is malformed
// or fails to read, an output that fails to write, an error reported by the library), 2 usage error
// (a bad flag or value, a path that does not exist, is of the wrong kind or is not writable; nothing
// ran).
// A usage error is one line on stderr: "<tool>: <message> (see <tool> --help)".
//
// Each tool puts its options into a function `add_options(CLI::App&, config&)` in a header
// (<tool>_cli.hpp) that both the tool and tests/fuzz/fuzz_cli.cpp include; cross-option checks
// run in the App's final callback, so CLI::App::parse validates everything at once, before any
// expensive work (probes, calibration, model loading).
#pragma once

#include <CLI/CLI.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace aqua_cli {

enum exit_status : int { exit_ok = 0, exit_runtime_error = 1, exit_usage_error = 2 };

/// The footer every tool's --help ends with.
inline const char* const exit_status_footer =
    "Exit status: 0 success (also --help); 1 runtime error (an input file that is malformed or fails to "
    "read, an output that fails to write, an error reported by the library); 2 usage error (a bad flag or "
    "value, a path that does not exist, is of the wrong kind or cannot be written: nothing has run). See "
    "docs/errors.md.";

/// A usage error found after parsing (a combination of options): exit status 2.
struct usage_error : CLI::ValidationError {
  explicit usage_error(const std::string& message) : CLI::ValidationError(message) {}
};

/// The largest thread count the tools accept: 4x the hardware threads (at least 4). Beyond that
/// the threads only contend for the same cores, and a typo (--threads 10000) would start
/// thousands of threads.
inline int max_threads() {
  const unsigned hw = std::max(1u, std::min(std::thread::hardware_concurrency(), 1024u));
  return static_cast<int>(std::max(4u, 4u * hw));
}

namespace internal {

/// Decimal integers only: an optional '-', then digits; no spaces, no '+', no hex or octal
/// prefixes, no fractions or exponents, no overflow.
template <class T>
bool parse_integer(const std::string& s, T& out) {
  static_assert(std::is_integral<T>::value, "integers only");
  if (s.empty() || s.size() > 40) return false;
  const char* first = s.data();
  const char* last = s.data() + s.size();
  if (*first == '-' && !std::is_signed<T>::value) return false;
  for (const char* p = (*first == '-') ? first + 1 : first; p < last; ++p)
    if (*p < '0' || *p > '9') return false;
  if ((*first == '-' && s.size() == 1)) return false;
  const auto result = std::from_chars(first, last, out);
  return result.ec == std::errc() && result.ptr == last;
}

/// Whether s is written as a decimal integer (whether or not it fits a type).
inline bool integer_syntax(const std::string& s) {
  const std::size_t first = !s.empty() && s[0] == '-' ? 1 : 0;
  if (s.size() == first) return false;
  for (std::size_t i = first; i < s.size(); ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

/// Finite decimal reals: digits, at most one '.', an optional exponent; no nan, inf, hex or spaces.
inline bool parse_real(const std::string& s, double& out) {
  if (s.empty() || s.size() > 64) return false;
  for (char ch : s)
    if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == 'e' || ch == 'E' || ch == '-' || ch == '+'))
      return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return false;
  out = v;
  return true;
}

template <class T>
std::string range_text(T lo, T hi) {
  return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

inline std::string real_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace internal

/// Validator: a decimal integer in [lo, hi] (why: optional reason shown after the range). It also
/// rewrites the value in canonical decimal, so CLI11's own conversion (strtoll base 0) never sees
/// a leading zero (which it would read as octal).
template <class T>
CLI::Validator integer_in(T lo, T hi, const std::string& why = "") {
  const std::string range = internal::range_text(lo, hi);
  return CLI::Validator(
      [lo, hi, range, why](std::string& s) -> std::string {
        T v{};
        if (!internal::parse_integer(s, v))
          return internal::integer_syntax(s) ? s + " is out of range " + range
                                             : "'" + s + "' is not an integer";
        if (v < lo || v > hi) return s + " is out of range " + range + (why.empty() ? "" : " (" + why + ")");
        s = std::to_string(v);
        return {};
      },
      "in " + range, "integer_in");
}

/// Validator: a finite decimal real in [lo, hi]; lo_open / hi_open exclude the bound.
inline CLI::Validator real_in(double lo, double hi, bool lo_open = false, bool hi_open = false) {
  const std::string range = std::string(lo_open ? "(" : "[") + internal::real_text(lo) + ", " +
                            internal::real_text(hi) + (hi_open ? ")" : "]");
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        double v = 0;
        if (!internal::parse_real(s, v)) return "'" + s + "' is not a finite number";
        const bool below = lo_open ? !(v > lo) : !(v >= lo);
        const bool above = hi_open ? !(v < hi) : !(v <= hi);
        if (below || above) return s + " is out of range " + range;
        return {};
      },
      "in " + range, "real_in");
}

/// Validator: an output file that can be created or overwritten: not a directory, its directory
/// exists and is writable (checked without creating anything, before the work that produces it).
inline CLI::Validator writable_file() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        if (path.empty()) return "the output path is empty";
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
          if (S_ISDIR(st.st_mode)) return path + " is a directory, not a file";
          if (::access(path.c_str(), W_OK) != 0) return "cannot write " + path + ": " + std::strerror(errno);
          return {};
        }
        const auto slash = path.find_last_of('/');
        const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
        if (slash != std::string::npos && slash + 1 == path.size())
          return path + " names a directory, not a file";
        if (::stat(dir.c_str(), &st) != 0) return "the directory " + dir + " does not exist";
        if (!S_ISDIR(st.st_mode)) return dir + " is not a directory";
        if (::access(dir.c_str(), W_OK | X_OK) != 0)
          return "cannot write into " + dir + ": " + std::strerror(errno);
        return {};
      },
      "FILE (writable)", "writable_file");
}

/// Validator: an output directory: created by the tool if missing (then its parent must be a
/// writable directory), or an existing writable directory.
inline CLI::Validator writable_dir() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        if (path.empty()) return "the output directory is empty";
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
          if (!S_ISDIR(st.st_mode)) return path + " exists and is not a directory";
          if (::access(path.c_str(), W_OK | X_OK) != 0)
            return "cannot write into " + path + ": " + std::strerror(errno);
          return {};
        }
        std::string trimmed = path;
        while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
        const auto slash = trimmed.find_last_of('/');
        const std::string parent = slash == std::string::npos ? "."
                                   : slash == 0               ? "/"
                                                              : trimmed.substr(0, slash);
        if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
          return "cannot create " + path + ": the directory " + parent + " does not exist";
        if (::access(parent.c_str(), W_OK | X_OK) != 0)
          return "cannot create " + path + ": " + std::strerror(errno);
        return {};
      },
      "DIR (writable)", "writable_dir");
}

/// Validator: an existing regular file that can be read.
inline CLI::Validator readable_file() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        struct stat st {};
        if (path.empty()) return "the file name is empty";
        if (::stat(path.c_str(), &st) != 0) return "cannot open " + path + ": " + std::strerror(errno);
        if (S_ISDIR(st.st_mode)) return path + " is a directory, not a file";
        if (::access(path.c_str(), R_OK) != 0) return "cannot read " + path + ": " + std::strerror(errno);
        return {};
      },
      "FILE (readable)", "readable_file");
}

/// Validator: an existing directory that can be read.
inline CLI::Validator readable_dir() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        struct stat st {};
        if (path.empty()) return "the directory name is empty";
        if (::stat(path.c_str(), &st) != 0) return "cannot open " + path + ": " + std::strerror(errno);
        if (!S_ISDIR(st.st_mode)) return path + " is not a directory";
        if (::access(path.c_str(), R_OK | X_OK) != 0)
          return "cannot read " + path + ": " + std::strerror(errno);
        return {};
      },
      "DIR (readable)", "readable_dir");
}

/// --name VALUE: an integer in [lo, hi], its default shown in --help.
template <class T>
CLI::Option* integer(CLI::App& app, const std::string& name, T& value, T lo, T hi, const std::string& help,
                     const std::string& why = "") {
  return app.add_option(name, value, help)->transform(integer_in<T>(lo, hi, why))->capture_default_str();
}

namespace internal {

/// A list option's default in --help: CLI11 writes an empty vector as "[]" (shown as "=[]"); a list
/// that is empty unless given (its absence means "none") shows no default at all.
template <class T>
CLI::Option* list_default(CLI::Option* option, const std::vector<T>& value) {
  option->capture_default_str();
  if (value.empty()) option->default_str("");
  return option;
}

}  // namespace internal

/// --name V[,V..]: a comma-separated list of integers in [lo, hi] (repeating the flag appends). An
/// empty default shows no default in --help.
template <class T>
CLI::Option* integer_list(CLI::App& app, const std::string& name, std::vector<T>& value, T lo, T hi,
                          const std::string& help) {
  return internal::list_default(app.add_option(name, value, help)
                                    ->delimiter(',')
                                    ->allow_extra_args(false)
                                    ->transform(integer_in<T>(lo, hi)),
                                value);
}

/// --name VALUE: a finite real in [lo, hi] (open bounds as real_in).
inline CLI::Option* real(CLI::App& app, const std::string& name, double& value, double lo, double hi,
                         const std::string& help, bool lo_open = false, bool hi_open = false) {
  return app.add_option(name, value, help)->check(real_in(lo, hi, lo_open, hi_open))->capture_default_str();
}

/// --name WORD: one of the given words.
inline CLI::Option* choice(CLI::App& app, const std::string& name, std::string& value,
                           const std::vector<std::string>& words, const std::string& help) {
  return app.add_option(name, value, help)->check(CLI::IsMember(words))->capture_default_str();
}

/// --name WORD[,WORD..]: a comma-separated list of the given words (an empty default shows none).
inline CLI::Option* choice_list(CLI::App& app, const std::string& name, std::vector<std::string>& value,
                                const std::vector<std::string>& words, const std::string& help) {
  return internal::list_default(
      app.add_option(name, value, help)->delimiter(',')->allow_extra_args(false)->check(CLI::IsMember(words)),
      value);
}

/// --name FILE: readable files, one per flag (repeating the flag appends; no delimiter, so a path
/// may hold commas). An empty default shows none.
inline CLI::Option* file_list(CLI::App& app, const std::string& name, std::vector<std::string>& value,
                              const std::string& help) {
  return internal::list_default(
      app.add_option(name, value, help)->allow_extra_args(false)->check(readable_file()), value);
}

/// --threads T: 1 to max_threads().
inline CLI::Option* threads(CLI::App& app, int& value, const std::string& help = "worker threads") {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  return integer<int>(app, "--threads", value, 1, max_threads(), help,
                      "at most 4x the " + std::to_string(hw) + " hardware threads");
}

/// This machine's physical memory in bytes (0 if unknown).
inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
}

inline std::string gib_text(double bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / double(1u << 30));
  return buf;
}

/// A usage error when a configuration would need more memory than the machine has (what: the
/// options that size it, e.g. "--n 100000000 with --hkv 8, --d 128").
inline void check_memory(double bytes, const std::string& what) {
  const double have = physical_memory_bytes();
  if (have > 0 && bytes > have)
    throw usage_error(what + " needs about " + gib_text(bytes) + " of memory; this machine has " +
                      gib_text(have));
}

/// The App every tool starts from: its description, the exit-status footer, no abbreviations.
inline void configure(CLI::App& app) {
  app.footer(exit_status_footer);
  app.option_defaults()->always_capture_default();
  app.get_formatter()->column_width(34);
}

/// One line for a usage error: the message (newlines folded), then where to find the flags.
inline std::string one_line(std::string message) {
  for (char& ch : message)
    if (ch == '\n' || ch == '\r') ch = ' ';
  while (!message.empty() && message.back() == ' ') message.pop_back();
  return message;
}

/// Parses argv into the App; returns -1 to go on, or the exit status (0 after --help, 2 after a
/// usage error, which it reports in one line on stderr).
inline int parse(CLI::App& app, int argc, const char* const* argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? exit_ok : exit_usage_error;  // --help
    const std::string tool = app.get_name();
    std::fprintf(stderr, "%s: %s (see %s --help)\n", tool.c_str(), one_line(e.what()).c_str(), tool.c_str());
    return exit_usage_error;
  }
  return -1;
}

/// main() of a tool: parse, then run body() (which returns the exit status); an exception from the
/// body is a runtime error (exit 1), reported as "<tool>: <what>", except a usage_error (exit 2: a
/// value checked against an input's header, e.g. --max-tokens against the model's context).
template <class Body>
int run(CLI::App& app, int argc, const char* const* argv, Body&& body) {
  const int status = parse(app, argc, argv);
  if (status >= 0) return status;
  const std::string tool = app.get_name();
  try {
    return std::forward<Body>(body)();
  } catch (const usage_error& e) {  // a value that only the input files show to be wrong
    std::fprintf(stderr, "%s: %s (see %s --help)\n", tool.c_str(), one_line(e.what()).c_str(), tool.c_str());
    return exit_usage_error;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", tool.c_str(), one_line(e.what()).c_str());
    return exit_runtime_error;
  }
}

}  // namespace aqua_cli
