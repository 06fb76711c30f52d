// The fuzz corpora (tests/fuzz/corpus/<target>/*) replayed in the normal suite through the same
// in-memory loaders the fuzz targets call: every file gives a valid object or aqua::error, nothing
// else. Files named bad_* must be rejected and files named valid_* must load (make_corpus.py's
// naming); any other file (a fuzzer's find added later) may go either way. The directory is read at
// run time, so files added after the build are replayed too.
#include <aqua/io.hpp>

#include <catch2/catch.hpp>

#include "../examples/llama2c/checkpoint.hpp"
#include "../examples/llama2c/tokenizer.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "file_support.hpp"

#ifndef AQUA_TEST_FUZZ_CORPUS_DIR
#error "tests/CMakeLists.txt defines AQUA_TEST_FUZZ_CORPUS_DIR (the tests/fuzz/corpus directory)"
#endif

namespace {

namespace fs = std::filesystem;

// Replays every file of corpus/<target> through `load` (which throws aqua::error or checks the
// object it loaded) and holds each to its name's promise.
void replay_corpus(const std::string& target, const std::function<void(const std::vector<char>&)>& load) {
  const fs::path dir = fs::path(AQUA_TEST_FUZZ_CORPUS_DIR) / target;
  REQUIRE(fs::is_directory(dir));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  REQUIRE(!files.empty());
  int valid = 0, rejected = 0;
  for (const auto& file : files) {
    const std::string name = file.filename().string();
    CAPTURE(target, name);
    const auto bytes = aqua_test::read_bytes<std::vector<char>>(file.string());
    bool loaded = false;
    try {
      load(bytes);
      loaded = true;
    } catch (const aqua::error& e) {
      CAPTURE(e.what());
      CHECK(name.rfind("valid_", 0) != 0);  // valid_* must load
    }
    if (loaded) CHECK(name.rfind("bad_", 0) != 0);  // bad_* must be rejected
    (loaded ? valid : rejected) += 1;
  }
  INFO(target << ": " << files.size() << " files, " << valid << " valid, " << rejected << " rejected");
  CHECK(valid + rejected == int(files.size()));
}

}  // namespace

TEST_CASE("the npy fuzz corpus gives valid arrays or aqua::error", "[fuzz_corpus][io]") {
  replay_corpus("npy", [](const std::vector<char>& bytes) {
    aqua::npy_array a = aqua::read_npy(bytes.data(), bytes.size());
    aqua::index_t n = 1;
    for (aqua::index_t e : a.shape()) n *= e;
    CHECK(n == a.size());  // a valid array's shape holds exactly its elements
    a.convert_to_float();
    CHECK(aqua::index_t(a.float_data().size()) == n);
  });
}

TEST_CASE("the projection fuzz corpus gives valid projection sets or aqua::error", "[fuzz_corpus][io]") {
  replay_corpus("projection", [](const std::vector<char>& bytes) {
    const aqua::projection_set set = aqua::load_projection_set(bytes.data(), bytes.size());
    CHECK(!set.empty());
    CHECK(set.layers() >= 1);
    CHECK(set.kv_heads() >= 1);
    CHECK(set.d() >= 1);
    for (aqua::index_t l = 0; l < set.layers(); ++l)
      for (aqua::index_t h = 0; h < set.kv_heads(); ++h) CHECK(set.head(l, h).basis().rows() == set.d());
  });
}

TEST_CASE("the checkpoint fuzz corpus gives valid llama2.c checkpoints or aqua::error",
          "[fuzz_corpus][llama2c]") {
  replay_corpus("checkpoint", [](const std::vector<char>& bytes) {
    const llama2c::checkpoint ck = llama2c::checkpoint::load(bytes.data(), bytes.size());
    CHECK(llama2c::checkpoint::expected_file_size(ck.cfg()) == bytes.size());
  });
}

TEST_CASE("the tokenizer fuzz corpus gives valid tokenizers or aqua::error", "[fuzz_corpus][llama2c]") {
  // As in fuzz_tokenizer.cpp: the first byte is the model's vocab_size, the rest the file.
  replay_corpus("tokenizer", [](const std::vector<char>& bytes) {
    if (bytes.empty()) throw aqua::error("empty corpus file: no vocab_size byte");
    const int vocab_size = static_cast<unsigned char>(bytes[0]);
    const llama2c::tokenizer t = llama2c::tokenizer::load(bytes.data() + 1, bytes.size() - 1, vocab_size);
    CHECK(t.vocab_size() == vocab_size);
    try {
      for (int id : t.encode("Once upon a time, \xc3\xa9t\xc3\xa9 \xf0\x9f\x99\x82!", true, true)) {
        CHECK(id >= 0);
        CHECK(id < vocab_size);
      }
    } catch (const aqua::error&) {
      // A valid tiny vocabulary may lack the byte tokens the text needs: an error, not a crash.
    }
  });
}
