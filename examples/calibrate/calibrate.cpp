// aqua_calibrate: per-head projections from activation dumps, and their retention figures.
//
//   aqua_calibrate --dumps DIR --out FILE.safetensors [--source queries|keys|queries_and_keys]
//                  [--center] [--eval DIR] [--json] [--threads N] [--max-queries N] [--max-keys N]
//                  [--model NAME]
//   aqua_calibrate --projection FILE.safetensors --eval DIR [--json] [--threads N] ...
//
// A dump directory holds q_layer{l}.npy [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d] for
// l = 0, 1, ... (float32 or float64). The first form calibrates on DIR, writes the projection set
// and prints the retention table on the calibration dumps (and on --eval DIR when given); the
// second evaluates an existing projection file. --json prints one JSON object per line instead of
// tables. Progress goes to stderr. Exit status: 0 success, 1 bad input or failure, 2 bad usage
// (flags, and paths that do not exist or cannot be written: checked before anything is read).
#include <aqua/calibrate.hpp>
#include <aqua/io.hpp>
#include <aqua/projection.hpp>

#include <nlohmann/json.hpp>

#include "calibrate/calibrate_cli.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using aqua::index_t;

namespace {

using aqua_calibrate_cli::options;

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error(message);
}

/// The shape of a dump directory, taken from its files.
struct dump_shape {
  index_t layers = 0, hq = 0, hkv = 0, d = 0;
};

std::string q_path(const std::string& dir, index_t l) {
  return (fs::path(dir) / ("q_layer" + std::to_string(l) + ".npy")).string();
}
std::string k_path(const std::string& dir, index_t l) {
  return (fs::path(dir) / ("k_layer" + std::to_string(l) + ".npy")).string();
}

/// The number of layers of a dump directory, from its file names alone (nothing is read): q_layer{l}.npy
/// and k_layer{l}.npy must be regular files for l = 0 .. layers-1.
index_t count_layers(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("dump directory \"" + dir + "\" does not exist or is not a directory");
  auto must_be_file = [&](const std::string& path) {
    if (!fs::is_regular_file(path, ec)) fail(path + " is not a regular file");
  };
  index_t layers = 0;
  while (fs::exists(q_path(dir, layers), ec)) must_be_file(q_path(dir, layers++));
  if (layers == 0) fail("dump directory \"" + dir + "\" has no q_layer0.npy");
  for (index_t l = 0; l < layers; ++l) {
    if (!fs::exists(k_path(dir, l), ec))
      fail(k_path(dir, l) + " is missing (there is a " + q_path(dir, l) + ")");
    must_be_file(k_path(dir, l));
  }
  if (fs::exists(k_path(dir, layers), ec))
    fail(k_path(dir, layers) + " exists but " + q_path(dir, layers) + " does not");
  return layers;
}

struct layer_data {
  aqua::npy_array q, k;
};

/// Reads one layer and checks it against the shape seen so far (the first layer sets it).
layer_data read_layer(const std::string& dir, index_t l, dump_shape& shape) {
  layer_data out{aqua::read_npy_float(q_path(dir, l)), aqua::read_npy_float(k_path(dir, l))};
  const auto& q = out.q;
  const auto& k = out.k;
  if (q.rank() != 3) fail(q_path(dir, l) + " has shape " + q.shape_string() + "; expected [Hq, rows, d]");
  if (k.rank() != 3) fail(k_path(dir, l) + " has shape " + k.shape_string() + "; expected [Hkv, rows, d]");
  if (q.extent(0) < 1 || q.extent(2) < 1 || k.extent(0) < 1)
    fail(q_path(dir, l) + " " + q.shape_string() + " / " + k_path(dir, l) + " " + k.shape_string() +
         ": heads and d must be positive");
  if (k.extent(2) != q.extent(2))
    fail(k_path(dir, l) + " has d = " + std::to_string(k.extent(2)) + " but " + q_path(dir, l) +
         " has d = " + std::to_string(q.extent(2)));
  if (q.extent(0) % k.extent(0) != 0)
    fail(q_path(dir, l) + " has " + std::to_string(q.extent(0)) + " query heads, not a multiple of the " +
         std::to_string(k.extent(0)) + " KV heads of " + k_path(dir, l));
  if (l == 0 && shape.d == 0) {
    shape.hq = q.extent(0);
    shape.hkv = k.extent(0);
    shape.d = q.extent(2);
  } else if (q.extent(0) != shape.hq || k.extent(0) != shape.hkv || q.extent(2) != shape.d) {
    fail("layer " + std::to_string(l) + " of " + dir + " has Hq = " + std::to_string(q.extent(0)) +
         ", Hkv = " + std::to_string(k.extent(0)) + ", d = " + std::to_string(q.extent(2)) +
         " but the dumps need Hq = " + std::to_string(shape.hq) + ", Hkv = " + std::to_string(shape.hkv) +
         ", d = " + std::to_string(shape.d));
  }
  return out;
}

void progress(const std::string& message) {
  std::cerr << "aqua_calibrate: " << message << std::endl;
}

/// k = d/8, 2d/8, ..., d (rounded, at least 1, no repeats).
std::vector<index_t> table_ks(index_t d) {
  std::vector<index_t> ks;
  for (index_t j = 1; j <= 8; ++j) {
    const index_t k = std::max<index_t>(1, (j * d + 4) / 8);
    if (ks.empty() || ks.back() != k) ks.push_back(k);
  }
  return ks;
}

void print_table(const std::string& title, const aqua::retention_evaluator& ev, index_t layers,
                 double (aqua::retention_curve::*metric)(index_t) const) {
  const auto ks = table_ks(ev.projections().d());
  std::cout << title << "\n" << std::left << std::setw(8) << "layer" << std::right;
  for (index_t k : ks) std::cout << std::setw(9) << ("k=" + std::to_string(k));
  std::cout << "\n";
  auto row = [&](const std::string& name, const aqua::retention_curve& c) {
    std::cout << std::left << std::setw(8) << name << std::right << std::fixed << std::setprecision(4);
    for (index_t k : ks) std::cout << std::setw(9) << (c.*metric)(k);
    std::cout << "\n";
  };
  for (index_t l = 0; l < layers; ++l) row(std::to_string(l), ev.layer(l));
  row("mean", ev.overall());
  std::cout << "\n";
}

void report(const std::string& dataset, const std::string& dir, const aqua::retention_evaluator& ev,
            const options& o) {
  const auto& set = ev.projections();
  const index_t d = set.d();
  if (o.json) {
    auto emit = [&](const nlohmann::ordered_json& scope, const std::optional<index_t>& kv_head,
                    const aqua::retention_curve& c) {
      for (index_t k = 1; k <= d; ++k) {
        nlohmann::ordered_json j;
        j["dataset"] = dataset;
        j["layer"] = scope;
        if (kv_head) j["kv_head"] = *kv_head;
        j["k"] = k;
        j["d"] = d;
        j["retention_topk"] = c.topk_at(k);
        j["retention_prefix"] = c.prefix_at(k);
        j["score_rel_err"] = c.score_rel_err_at(k);
        j["queries"] = c.queries;
        std::cout << j.dump() << "\n";
      }
    };
    for (index_t l = 0; l < set.layers(); ++l) {
      for (index_t h = 0; h < set.kv_heads(); ++h) emit(l, h, ev.head(l, h));
      emit(l, std::nullopt, ev.layer(l));
    }
    emit("mean", std::nullopt, ev.overall());
    std::cout.flush();
    return;
  }
  const auto all = ev.overall();
  std::cout << "Retention on the " << dataset << " dumps " << dir << " (" << set.layers() << " layers, "
            << set.query_heads() << " query heads, " << set.kv_heads() << " KV heads, d = " << d << "; "
            << all.queries << " queries; max " << o.max_queries << " queries per head and layer, "
            << o.max_keys << " keys per KV head and layer, 0 = all)\n\n";
  print_table("Fraction of query energy in the top-k |q~| dimensions (AQUA selection)", ev, set.layers(),
              &aqua::retention_curve::topk_at);
  print_table("Fraction of query energy in the first k dimensions (static truncation)", ev, set.layers(),
              &aqua::retention_curve::prefix_at);
  print_table("Relative error of q.k scores with the top-k dimensions", ev, set.layers(),
              &aqua::retention_curve::score_rel_err_at);
}

void evaluate(const std::string& dataset, const std::string& dir, const aqua::projection_set& set,
              const options& o) {
  const index_t layers = count_layers(dir);
  if (layers != set.layers())
    fail(dir + " has " + std::to_string(layers) + " layers but the projection set has " +
         std::to_string(set.layers()));
  dump_shape shape{set.layers(), set.query_heads(), set.kv_heads(), set.d()};
  aqua::retention_options ropt;
  ropt.max_queries = o.max_queries;
  ropt.max_keys = o.max_keys;
  ropt.threads = o.threads;
  aqua::retention_evaluator ev(set, ropt);
  for (index_t l = 0; l < layers; ++l) {
    const layer_data data = read_layer(dir, l, shape);
    ev.add_layer(l, data.q.float_view<3>(), data.k.float_view<3>());
    progress("evaluated layer " + std::to_string(l + 1) + "/" + std::to_string(layers) + " of " + dir);
  }
  report(dataset, dir, ev, o);
}

int run(const options& o) {
  // The layouts of both dump directories before the (long) calibration.
  if (!o.dumps.empty()) count_layers(o.dumps);
  if (!o.eval.empty()) count_layers(o.eval);
  if (!o.projection.empty()) {
    const aqua::projection_set set = aqua::load_projection_set(o.projection);
    progress("loaded " + o.projection + " (" + std::to_string(set.layers()) + " layers, " +
             std::to_string(set.kv_heads()) + " KV heads, d = " + std::to_string(set.d()) + ")");
    evaluate("eval", o.eval, set, o);
    return 0;
  }
  const index_t layers = count_layers(o.dumps);
  dump_shape shape;
  std::optional<aqua::calibrator> cal;
  const auto start = std::chrono::steady_clock::now();
  for (index_t l = 0; l < layers; ++l) {
    const layer_data data = read_layer(o.dumps, l, shape);
    if (!cal) {
      aqua::calibrator_options copt;
      copt.source = o.source;
      copt.center = o.center;
      copt.progress = [](const aqua::calibration_progress& p) {
        if (p.stage == aqua::calibration_progress::stage_t::finalize && p.heads_done == p.heads_total)
          progress("finalized " + std::to_string(p.heads_total) + " heads");
      };
      cal.emplace(layers, shape.hq, shape.hkv, shape.d, copt);
    }
    cal->add_queries(l, data.q.float_view<3>());
    cal->add_keys(l, data.k.float_view<3>());
    progress("accumulated layer " + std::to_string(l + 1) + "/" + std::to_string(layers) + " (" +
             std::to_string(cal->vectors_seen()) + " vectors so far)");
  }
  aqua::projection_set set = cal->finalize(o.threads);
  set.metadata()["calibration_dumps"] = o.dumps;
  if (!o.model.empty()) set.metadata()["model"] = o.model;
  aqua::save_projection_set(o.out, set);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ostringstream msg;
  msg << "wrote " << o.out << " (" << layers << " layers x " << shape.hkv << " KV heads, d = " << shape.d
      << ", source " << aqua::to_string(o.source) << ", " << set.vectors_seen() << " vectors, " << std::fixed
      << std::setprecision(2) << seconds << " s)";
  progress(msg.str());
  evaluate("calibration", o.dumps, set, o);
  if (!o.eval.empty()) evaluate("eval", o.eval, set, o);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_calibrate"};
  options o;
  aqua_calibrate_cli::add_options(app, o);
  return aqua_cli::run(app, argc, argv, [&] { return run(o); });
}
