// Selection policies past the paper's uniform rule, for the "push past the reference" experiment:
// per-(layer, head) budgets, per-head energy thresholds, weighted selection scores and a
// non-orthogonal query/key transform. Fitted on calibration text, then evaluated held out.
//
// A policy holds, per layer and KV head, a query transform Tq and a key transform Tk (d x d, with
// Tq Tk^T = I so that keeping every dim is exact: q~ = q Tq, k~ = k Tk, q~ . k~ = q . k) and a
// weight s (d) on the selection score |q~_i| s_i; per layer and query head either a fixed count
// k or an energy threshold tau over (q~_i s_i)^2. The paper's rule is Tq = Tk = P (orthogonal),
// s = 1, the same k everywhere.
//
// aqua_decode / aqua_prefill take one selection_spec for every head, an orthogonal basis shared by
// queries and keys, and rank by |q~_i| alone, so `policy_attention` computes attention itself
// (scalar, double accumulation; d = 8 here). It is an experiment harness, not a kernel: a variant
// that wins here would move into the library's kernels (per-head specs, a weight vector).
//
// Fitting (fit_policy) runs the model with exact attention over calibration windows twice: the
// first pass collects second moments of queries and keys (bases, key weights); the second, with
// the bases fixed, measures per head and per k the error each selection would cause in that
// head's contribution to the residual stream (through W_o), and the distribution of per-query
// energy fractions (for thresholds hitting a target mean k).
#pragma once

#include <aqua/attention.hpp>
#include <aqua/select.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "llama2c/checkpoint.hpp"
#include "llama2c/transformer.hpp"

namespace llama2c {

struct selection_policy {
  int layers = 0, q_heads = 0, kv_heads = 0, d = 0;
  std::vector<double> tq, tk;  // [layers][kv_heads][d][d], row-major: q~_j = sum_i q_i Tq(i, j)
  std::vector<double> weight;  // [layers][kv_heads][d]
  std::vector<int> k;          // [layers][q_heads]: fixed count, 0 = use tau
  std::vector<double> tau;     // [layers][q_heads]
  std::string description;

  std::size_t transform_at(int l, int g) const { return (std::size_t(l) * kv_heads + g) * d * d; }
  std::size_t weight_at(int l, int g) const { return (std::size_t(l) * kv_heads + g) * d; }
  std::size_t head_at(int l, int h) const { return std::size_t(l) * q_heads + h; }

  void resize(int l, int hq, int hkv, int dim) {
    layers = l, q_heads = hq, kv_heads = hkv, d = dim;
    tq.assign(std::size_t(l) * hkv * dim * dim, 0.0);
    tk = tq;
    weight.assign(std::size_t(l) * hkv * dim, 1.0);
    k.assign(std::size_t(l) * hq, dim);
    tau.assign(k.size(), 1.0);
  }

  /// Mean of the fixed per-head counts (thresholded heads count as 0).
  double mean_fixed_k() const {
    double s = 0;
    for (int v : k) s += v;
    return k.empty() ? 0.0 : s / double(k.size());
  }

  void save(const std::string& path) const {
    std::ofstream f(path);
    AQUA_CHECK(f.good(), "llama2c::selection_policy::save: cannot open '", path, "' for writing");
    f.precision(17);
    f << "aqua_llama_policy 1 " << layers << ' ' << q_heads << ' ' << kv_heads << ' ' << d << '\n';
    f << "# " << description << '\n';
    for (const auto* v : {&tq, &tk, &weight}) {
      for (std::size_t i = 0; i < v->size(); ++i)
        f << (*v)[i] << ((i + 1) % std::size_t(d) == 0 ? '\n' : ' ');
    }
    for (std::size_t i = 0; i < k.size(); ++i) f << k[i] << ' ' << tau[i] << '\n';
    AQUA_CHECK(f.good(), "llama2c::selection_policy::save: writing '", path, "' failed");
  }

  static selection_policy load(const std::string& path) {
    constexpr const char* fn = "llama2c::selection_policy::load";
    std::ifstream f(path);
    AQUA_CHECK(f.good(), fn, ": cannot open '", path, "'");
    std::string magic;
    int version = 0;
    selection_policy p;
    f >> magic >> version >> p.layers >> p.q_heads >> p.kv_heads >> p.d;
    AQUA_CHECK(f.good() && magic == "aqua_llama_policy" && version == 1, fn, ": '", path,
               "' is not an aqua_llama policy file (version 1)");
    AQUA_CHECK(p.layers >= 1 && p.layers <= 1024 && p.kv_heads >= 1 && p.kv_heads <= 1024 &&
                   p.q_heads >= p.kv_heads && p.q_heads % p.kv_heads == 0 && p.q_heads <= 4096 && p.d >= 1 &&
                   p.d <= 1024,
               fn, ": '", path, "' declares ", p.layers, " layers, ", p.q_heads, "/", p.kv_heads,
               " heads, d = ", p.d, " (out of range)");
    std::string line;
    std::getline(f, line);
    std::getline(f, line);
    if (line.rfind("# ", 0) == 0) p.description = line.substr(2);
    const int l = p.layers, hq = p.q_heads, hkv = p.kv_heads, d = p.d;
    p.resize(l, hq, hkv, d);
    for (auto* v : {&p.tq, &p.tk, &p.weight})
      for (double& x : *v) {
        f >> x;
        AQUA_CHECK(f.good() && std::isfinite(x), fn, ": '", path,
                   "' is truncated or holds a non-finite number");
      }
    for (std::size_t i = 0; i < p.k.size(); ++i) {
      f >> p.k[i] >> p.tau[i];
      AQUA_CHECK(!f.fail() && p.k[i] >= 0 && p.k[i] <= d && (p.k[i] > 0 || (p.tau[i] > 0 && p.tau[i] <= 1)),
                 fn, ": '", path, "' head ", i, ": k = ", p.k[i], ", tau = ", p.tau[i],
                 " (k must lie in [1, d], or be 0 with tau in (0, 1])");
    }
    for (double w : p.weight)
      AQUA_CHECK(w > 0, fn, ": '", path, "' holds a non-positive selection weight ", w);
    f >> line;
    AQUA_CHECK(f.eof(), fn, ": '", path, "' has trailing data after the last head");
    return p;
  }
};

/// The keys of every layer, projected with the policy's key transforms as they enter.
class projected_keys {
public:
  projected_keys(const selection_policy& p, int seq_len)
      : p_(p), seq_len_(seq_len), keys_(std::size_t(p.layers) * p.kv_heads * seq_len * p.d) {}

  void append(int layer, index_t first, aqua::tensor3_view<const float> keys) {
    const int d = p_.d;
    for (int g = 0; g < p_.kv_heads; ++g) {
      const double* t = &p_.tk[p_.transform_at(layer, g)];
      for (index_t m = 0; m < keys.extent(1); ++m) {
        double* out = mutable_row(layer, g, first + m);
        for (int j = 0; j < d; ++j) out[j] = 0;
        for (int i = 0; i < d; ++i) {
          const double x = keys(g, m, i);
          for (int j = 0; j < d; ++j) out[j] += x * t[i * d + j];
        }
      }
    }
  }
  const double* row(int layer, int g, index_t pos) const {
    return &keys_[((std::size_t(layer) * p_.kv_heads + g) * seq_len_ + std::size_t(pos)) * p_.d];
  }

private:
  double* mutable_row(int layer, int g, index_t pos) {
    return &keys_[((std::size_t(layer) * p_.kv_heads + g) * seq_len_ + std::size_t(pos)) * p_.d];
  }
  const selection_policy& p_;
  int seq_len_;
  std::vector<double> keys_;
};

/// q~ = q Tq for query head h (row t of q) and its selection values y_i = q~_i s_i.
inline void project_query(const selection_policy& p, int layer, int g, aqua::tensor3_view<const float> q,
                          index_t h, index_t t, double* qt, double* y) {
  const int d = p.d;
  const double* tr = &p.tq[p.transform_at(layer, g)];
  const double* w = &p.weight[p.weight_at(layer, g)];
  for (int j = 0; j < d; ++j) qt[j] = 0;
  for (int i = 0; i < d; ++i) {
    const double x = q(h, t, i);
    for (int j = 0; j < d; ++j) qt[j] += x * tr[i * d + j];
  }
  for (int j = 0; j < d; ++j) y[j] = qt[j] * w[j];
}

/// AQUA attention under a selection_policy (see the file comment), counting dims actually used.
class policy_attention final : public attention_backend {
public:
  policy_attention(const selection_policy& p, int seq_len)
      : p_(p),
        keys_(p_, seq_len),
        scores_(std::size_t(seq_len)),
        qt_(std::size_t(p.d)),
        y_(qt_.size()),
        idx_(qt_.size()) {}

  void append(int layer, index_t first, aqua::tensor3_view<const float> keys,
              aqua::tensor3_view<const float>) override {
    keys_.append(layer, first, keys);
  }

  void attend(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float>,
              aqua::tensor3_view<const float> v, aqua::tensor3_view<float> out) override {
    const int d = p_.d, group = p_.q_heads / p_.kv_heads;
    const index_t m = q.extent(1), n = v.extent(1);
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<double>& qt = qt_;
    std::vector<double>& y = y_;
    std::vector<index_t>& idx = idx_;
    for (int h = 0; h < p_.q_heads; ++h) {
      const int g = h / group;
      const std::size_t head = p_.head_at(layer, h);
      const aqua::selection_spec spec = p_.k[head] > 0 ? aqua::selection_spec::top_k(p_.k[head])
                                                       : aqua::selection_spec::energy(p_.tau[head]);
      for (index_t t = 0; t < m; ++t) {
        project_query(p_, layer, g, q, h, t, qt.data(), y.data());
        const index_t count =
            aqua::select_top<double>(aqua::make_view(static_cast<const double*>(y.data()), index_t(d)), spec,
                                     aqua::make_view(idx.data(), index_t(d)));
        selected_ += double(count);
        queries_ += 1;
        const index_t last = n - m + t;  // causal: positions 0 .. last
        double mx = -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j <= last; ++j) {
          const double* kr = keys_.row(layer, g, j);
          double s = 0;
          for (index_t c = 0; c < count; ++c)
            s += qt[std::size_t(idx[std::size_t(c)])] * kr[idx[std::size_t(c)]];
          scores_[std::size_t(j)] = s * scale;
          mx = std::max(mx, s * scale);
        }
        double z = 0;
        for (index_t j = 0; j <= last; ++j)
          z += scores_[std::size_t(j)] = std::exp(scores_[std::size_t(j)] - mx);
        for (int i = 0; i < d; ++i) {
          double o = 0;
          for (index_t j = 0; j <= last; ++j) o += scores_[std::size_t(j)] * v(g, j, i);
          out(h, t, i) = static_cast<float>(o / z);
        }
      }
    }
  }

  const char* name() const override { return "aqua-policy"; }
  double mean_selected() const { return queries_ == 0 ? 0.0 : selected_ / queries_; }

private:
  selection_policy p_;
  projected_keys keys_;
  std::vector<double> scores_, qt_, y_;  // scratch: no allocation per query
  std::vector<index_t> idx_;
  double selected_ = 0, queries_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Fitting

/// Exact attention that records the uncentered second moments of queries (all heads of a KV group
/// stacked) and keys per layer and KV head.
class moment_collector final : public attention_backend {
public:
  moment_collector(int layers, int q_heads, int kv_heads, int d)
      : q_heads_(q_heads),
        kv_heads_(kv_heads),
        sq_(std::size_t(layers) * kv_heads, Eigen::MatrixXd::Zero(d, d)),
        sk_(sq_),
        mk_(sq_.size(), Eigen::VectorXd::Zero(d)),
        nq_(sq_.size()),
        nk_(sq_.size()) {}

  void append(int layer, index_t, aqua::tensor3_view<const float> keys,
              aqua::tensor3_view<const float>) override {
    for (int g = 0; g < kv_heads_; ++g)
      for (index_t m = 0; m < keys.extent(1); ++m) {
        add(sk_, nk_, layer, g, keys, g, m);
        for (index_t i = 0; i < mk_[at(layer, g)].size(); ++i) mk_[at(layer, g)](i) += double(keys(g, m, i));
      }
  }
  void attend(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k,
              aqua::tensor3_view<const float> v, aqua::tensor3_view<float> out) override {
    const int group = q_heads_ / kv_heads_;
    for (int h = 0; h < q_heads_; ++h)
      for (index_t m = 0; m < q.extent(1); ++m) add(sq_, nq_, layer, h / group, q, h, m);
    dense_.attend(layer, q, k, v, out);
  }
  const char* name() const override { return "dense+moments"; }

  Eigen::MatrixXd queries(int l, int g) const { return sq_[at(l, g)] / nq_[at(l, g)]; }
  Eigen::MatrixXd keys(int l, int g) const { return sk_[at(l, g)] / nk_[at(l, g)]; }
  /// Covariance of the keys (second moment minus the outer product of the mean).
  Eigen::MatrixXd key_covariance(int l, int g) const {
    const Eigen::VectorXd mean = mk_[at(l, g)] / nk_[at(l, g)];
    return keys(l, g) - mean * mean.transpose();
  }

private:
  std::size_t at(int l, int g) const { return std::size_t(l) * kv_heads_ + g; }
  void add(std::vector<Eigen::MatrixXd>& s, std::vector<double>& n, int l, int g,
           aqua::tensor3_view<const float> x, index_t h, index_t m) {
    Eigen::MatrixXd& a = s[at(l, g)];
    for (index_t i = 0; i < a.rows(); ++i)
      for (index_t j = 0; j < a.cols(); ++j) a(i, j) += double(x(h, m, i)) * double(x(h, m, j));
    n[at(l, g)] += 1;
  }
  int q_heads_, kv_heads_;
  std::vector<Eigen::MatrixXd> sq_, sk_;
  std::vector<Eigen::VectorXd> mk_;
  std::vector<double> nq_, nk_;
  dense_attention dense_;
};

enum class basis_kind { identity, queries, joint, joint_centered };
enum class weight_kind { none, key_rms, key_std };

/// Eigenvectors of a symmetric matrix as columns, by decreasing eigenvalue.
inline Eigen::MatrixXd descending_eigenvectors(const Eigen::MatrixXd& m, Eigen::VectorXd* values = nullptr) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(m);
  const auto n = m.rows();
  Eigen::MatrixXd v(n, n);
  if (values) values->resize(n);
  for (index_t i = 0; i < n; ++i) {
    v.col(i) = es.eigenvectors().col(n - 1 - i);
    if (values) (*values)(i) = es.eigenvalues()(n - 1 - i);
  }
  return v;
}

/// The transforms and weights of a policy (counts left at d) from the first pass's moments.
///   queries: Tq = Tk = P, eigenvectors of E[q q^T] (the paper's calibration).
///   joint:   with A = E[k k^T]^(1/2), Tq = A V, Tk = A^-1 V, V the eigenvectors of A E[q q^T] A.
///            Keys are whitened, so the expected squared score error of dropping dims is exactly
///            the dropped energy of the transformed query: |q~_i| ranks by expected contribution.
///   joint_centered: the same with the key covariance: a score shift common to every key (the
///            keys' mean) leaves the softmax unchanged, so only the keys' spread needs whitening.
///   key_rms: s_i = RMS of the projected keys along dim i, so |q~_i| s_i ranks dims by the
///            expected size of q~_i k~_i rather than by |q~_i| alone.
///   key_std: s_i = standard deviation of the projected keys along dim i (their spread, which is
///            what moves the softmax).
inline selection_policy make_base_policy(const moment_collector& m, int layers, int q_heads, int kv_heads,
                                         int d, basis_kind basis, weight_kind weight) {
  selection_policy p;
  p.resize(layers, q_heads, kv_heads, d);
  for (int l = 0; l < layers; ++l)
    for (int g = 0; g < kv_heads; ++g) {
      Eigen::MatrixXd tq = Eigen::MatrixXd::Identity(d, d), tk = tq;
      const Eigen::MatrixXd sk = m.keys(l, g), ck = m.key_covariance(l, g);
      if (basis == basis_kind::queries) {
        tq = tk = descending_eigenvectors(m.queries(l, g));
      } else if (basis == basis_kind::joint || basis == basis_kind::joint_centered) {
        Eigen::VectorXd ev;
        const Eigen::MatrixXd u = descending_eigenvectors(basis == basis_kind::joint ? sk : ck, &ev);
        Eigen::VectorXd root(d), inv(d);
        const double floor = std::max(ev(0) * 1e-12, 1e-300);
        for (int i = 0; i < d; ++i) {
          root(i) = std::sqrt(std::max(ev(i), floor));
          inv(i) = 1.0 / root(i);
        }
        const Eigen::MatrixXd a = u * root.asDiagonal() * u.transpose();
        const Eigen::MatrixXd a_inv = u * inv.asDiagonal() * u.transpose();
        const Eigen::MatrixXd v = descending_eigenvectors(a * m.queries(l, g) * a);
        tq = a * v;
        tk = a_inv * v;
      }
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
          p.tq[p.transform_at(l, g) + std::size_t(i * d + j)] = tq(i, j);
          p.tk[p.transform_at(l, g) + std::size_t(i * d + j)] = tk(i, j);
        }
      if (weight != weight_kind::none) {
        const Eigen::MatrixXd& moment = weight == weight_kind::key_rms ? sk : ck;
        for (int i = 0; i < d; ++i)
          p.weight[p.weight_at(l, g) + std::size_t(i)] =
              std::sqrt(std::max(double(tk.col(i).transpose() * moment * tk.col(i)), 1e-30));
      }
    }
  return p;
}

/// Exact attention that measures, per layer, query head and count c = 1..d, the squared error the
/// policy's ranking truncated to c dims would cause in the head's contribution to the residual
/// stream (out_c - out) W_o,h^T, and keeps every query's cumulative energy fractions (for
/// thresholds).
class error_collector final : public attention_backend {
public:
  /// measure_errors = false records only the energy fractions (the error tables cost 8 softmaxes
  /// per query and key; only a per-head allocation needs them).
  error_collector(const selection_policy& p, const checkpoint& model, bool measure_errors = true)
      : measure_(measure_errors),
        p_(p),
        keys_(p_, model.cfg().seq_len),
        err_(std::size_t(p.layers) * p.q_heads * p.d, 0.0),
        energy_(std::size_t(p.layers) * p.q_heads),
        query_err_(energy_.size()),
        queries_(0) {
    const auto& c = model.cfg();
    const int d = p.d;
    // W_o is [dim, dim] row-major (out = att W_o^T): head h owns columns h*d .. h*d+d-1.
    for (int l = 0; l < p.layers; ++l)
      for (int h = 0; h < p.q_heads; ++h) {
        Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(d, d);
        const float* wo = model.wo(l);
        for (int o = 0; o < c.dim; ++o)
          for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b)
              gram(a, b) += double(wo[o * c.dim + h * d + a]) * double(wo[o * c.dim + h * d + b]);
        gram_.push_back(gram);
      }
  }

  void append(int layer, index_t first, aqua::tensor3_view<const float> keys,
              aqua::tensor3_view<const float>) override {
    keys_.append(layer, first, keys);
  }

  void attend(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k,
              aqua::tensor3_view<const float> v, aqua::tensor3_view<float> out) override {
    dense_.attend(layer, q, k, v, out);  // exact propagation
    const int d = p_.d, group = p_.q_heads / p_.kv_heads;
    const index_t m = q.extent(1), n = v.extent(1);
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<double> qt(static_cast<std::size_t>(d)), y(qt.size()),
        partial(static_cast<std::size_t>(n * d)), outs(static_cast<std::size_t>(d * d)),
        prob(static_cast<std::size_t>(n));
    std::vector<index_t> idx(qt.size());
    for (int h = 0; h < p_.q_heads; ++h) {
      const int g = h / group;
      const std::size_t head = p_.head_at(layer, h);
      for (index_t t = 0; t < m; ++t) {
        project_query(p_, layer, g, q, h, t, qt.data(), y.data());
        aqua::select_top<double>(aqua::make_view(static_cast<const double*>(y.data()), index_t(d)),
                                 aqua::selection_spec::top_k(d), aqua::make_view(idx.data(), index_t(d)));
        double total = 0;
        for (int i = 0; i < d; ++i) total += y[std::size_t(i)] * y[std::size_t(i)];
        double acc = 0;
        for (int c = 0; c < d; ++c) {
          acc += y[std::size_t(idx[std::size_t(c)])] * y[std::size_t(idx[std::size_t(c)])];
          energy_[head].push_back(static_cast<float>(total > 0 ? acc / total : 1.0));
        }
        if (!measure_) continue;
        const index_t last = n - m + t;
        // partial[j][c]: score of key j from the first c+1 ranked dims.
        for (index_t j = 0; j <= last; ++j) {
          const double* kr = keys_.row(layer, g, j);
          double s = 0;
          for (int c = 0; c < d; ++c) {
            s += qt[std::size_t(idx[std::size_t(c)])] * kr[idx[std::size_t(c)]];
            partial[std::size_t(j) * d + c] = s * scale;
          }
        }
        for (int c = 0; c < d; ++c) {
          double mx = -std::numeric_limits<double>::infinity(), z = 0;
          for (index_t j = 0; j <= last; ++j) mx = std::max(mx, partial[std::size_t(j) * d + c]);
          for (index_t j = 0; j <= last; ++j)
            z += prob[std::size_t(j)] = std::exp(partial[std::size_t(j) * d + c] - mx);
          for (int i = 0; i < d; ++i) {
            double o = 0;
            for (index_t j = 0; j <= last; ++j) o += prob[std::size_t(j)] * v(g, j, i);
            outs[std::size_t(c) * d + i] = o / z;
          }
        }
        // c = d - 1 (every dim) is exact attention, the reference for the others.
        const Eigen::Map<const Eigen::VectorXd> exact(&outs[std::size_t(d - 1) * d], d);
        for (int c = 0; c < d; ++c) {
          const Eigen::VectorXd diff =
              Eigen::Map<const Eigen::VectorXd>(&outs[std::size_t(c) * d], d) - exact;
          const double e = diff.dot(gram_[head] * diff);
          err_[head * d + std::size_t(c)] += e;
          query_err_[head].push_back(static_cast<float>(e));
        }
      }
    }
    if (layer == 0) queries_ += double(m);
  }
  const char* name() const override { return "dense+errors"; }

  /// Mean squared residual error of head (l, h) when it keeps c dims (1 <= c <= d).
  double error(int l, int h, int c) const {
    return err_[p_.head_at(l, h) * p_.d + std::size_t(c - 1)] / std::max(queries_, 1.0);
  }
  /// Cumulative energy fractions of every calibration query of head (l, h): d per query.
  const std::vector<float>& energy(int l, int h) const { return energy_[p_.head_at(l, h)]; }
  /// Every calibration query's residual error at c = 1..d dims (d per query; measured errors only).
  const std::vector<float>& query_errors(int l, int h) const { return query_err_[p_.head_at(l, h)]; }

private:
  bool measure_;
  const selection_policy& p_;
  projected_keys keys_;
  std::vector<Eigen::MatrixXd> gram_;
  std::vector<double> err_;
  std::vector<std::vector<float>> energy_, query_err_;
  double queries_;
  dense_attention dense_;
};

/// Integer counts k_h in [1, d], summing to `total`, that minimise sum_h err[h][k_h] (exact, by
/// dynamic programming over heads; err[h][c-1] is head h's error with c dims).
inline std::vector<int> allocate_counts(const std::vector<std::vector<double>>& err, int d, int total) {
  const int heads = int(err.size());
  AQUA_CHECK(total >= heads && total <= heads * d, "llama2c::allocate_counts: a budget of ", total,
             " dims for ", heads, " heads needs 1 .. ", d, " per head");
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(std::size_t(heads + 1),
                                        std::vector<double>(std::size_t(total + 1), inf));
  std::vector<std::vector<int>> choice(best.size(), std::vector<int>(std::size_t(total + 1), 0));
  best[0][0] = 0;
  for (int h = 0; h < heads; ++h)
    for (int b = 0; b <= total; ++b) {
      if (best[std::size_t(h)][std::size_t(b)] == inf) continue;
      for (int c = 1; c <= d && b + c <= total; ++c) {
        const double v = best[std::size_t(h)][std::size_t(b)] + err[std::size_t(h)][std::size_t(c - 1)];
        if (v < best[std::size_t(h + 1)][std::size_t(b + c)]) {
          best[std::size_t(h + 1)][std::size_t(b + c)] = v;
          choice[std::size_t(h + 1)][std::size_t(b + c)] = c;
        }
      }
    }
  std::vector<int> k(static_cast<std::size_t>(heads));
  for (int h = heads, b = total; h > 0; --h) {
    k[std::size_t(h - 1)] = choice[std::size_t(h)][std::size_t(b)];
    b -= k[std::size_t(h - 1)];
  }
  return k;
}

/// Mean number of dims a threshold tau keeps over queries whose cumulative energy fractions are
/// `cum` (d per query, ascending).
inline double mean_count(const std::vector<float>& cum, int d, double tau) {
  double s = 0;
  const std::size_t queries = cum.size() / std::size_t(d);
  for (std::size_t q = 0; q < queries; ++q) {
    int c = 0;
    while (c < d - 1 && double(cum[q * d + std::size_t(c)]) < tau * (1.0 - 1e-12)) ++c;
    s += c + 1;
  }
  return queries == 0 ? 0.0 : s / double(queries);
}

/// The largest tau whose mean count over `cum` stays at or below `target` (bisection).
inline double threshold_for(const std::vector<float>& cum, int d, double target) {
  double lo = 1e-9, hi = 1.0;
  if (mean_count(cum, d, hi) <= target) return hi;
  for (int it = 0; it < 60; ++it) {
    const double mid = 0.5 * (lo + hi);
    (mean_count(cum, d, mid) <= target ? lo : hi) = mid;
  }
  return lo;
}

/// Per-head thresholds by a Lagrangian trade-off: each head takes, from a grid of thresholds, the
/// one minimising (mean calibration error) + lambda * (mean count), lambda bisected until the mean
/// count over heads reaches `target`. `cum[h]` and `err[h]` hold d values per calibration query
/// (cumulative energy fractions; errors at 1..d dims), so a threshold's error is measured query
/// by query with the count it would keep. Returns tau per head.
inline std::vector<double> lagrange_thresholds(const std::vector<const std::vector<float>*>& cum,
                                               const std::vector<const std::vector<float>*>& err, int d,
                                               double target) {
  const std::size_t heads = cum.size();
  std::vector<double> grid;
  for (int i = 0; i <= 120; ++i) grid.push_back(1.0 - std::pow(10.0, -0.05 * i));  // 0 .. 1 - 1e-6
  grid.front() = 1e-9;
  grid.push_back(1.0);
  // (mean count, mean error) of every head at every grid threshold.
  std::vector<std::vector<double>> count(heads, std::vector<double>(grid.size())), error(count);
  for (std::size_t h = 0; h < heads; ++h) {
    const std::size_t queries = cum[h]->size() / std::size_t(d);
    for (std::size_t t = 0; t < grid.size(); ++t) {
      double sc = 0, se = 0;
      for (std::size_t q = 0; q < queries; ++q) {
        int c = 0;
        while (c < d - 1 && double((*cum[h])[q * d + std::size_t(c)]) < grid[t] * (1.0 - 1e-12)) ++c;
        sc += c + 1;
        se += (*err[h])[q * d + std::size_t(c)];
      }
      count[h][t] = sc / double(std::max<std::size_t>(queries, 1));
      error[h][t] = se / double(std::max<std::size_t>(queries, 1));
    }
  }
  auto choose = [&](double lambda, std::vector<double>* taus) {
    double total = 0;
    for (std::size_t h = 0; h < heads; ++h) {
      std::size_t best = 0;
      for (std::size_t t = 1; t < grid.size(); ++t)
        if (error[h][t] + lambda * count[h][t] < error[h][best] + lambda * count[h][best]) best = t;
      total += count[h][best];
      if (taus) (*taus)[h] = grid[best];
    }
    return total / double(heads);
  };
  // A larger lambda prices dims higher: fewer dims. Bisect (in log space) for the largest mean
  // count not above the target.
  double lo = 1e-12, hi = 1e6;
  for (int it = 0; it < 100; ++it) {
    const double mid = std::sqrt(lo * hi);
    (choose(mid, nullptr) > target ? lo : hi) = mid;
  }
  std::vector<double> taus(heads);
  choose(hi, &taus);
  return taus;
}

}  // namespace llama2c
