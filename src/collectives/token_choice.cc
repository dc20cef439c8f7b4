// Token choice and logit gathering over a vocabulary-parallel head (sampling.h).
//
// Protocol of one chooseToken() call (tags in tags::kTokenChoice):
//   step 0      every rank -> every rank: Header (its slice, options, sampler state, local max, NaN/+inf
//               ids, the sums the path needs, the number of candidates that follow)
//   step r >= 1 every rank -> every rank: candidates [cap_{r-1}, cap_r) of its local order (round 1 is
//               posted with the header, its size announced there; later sizes follow from the slices)
//   kStepToken  the owner of the drawn token -> every rank (unfiltered sampling only)
// Everything a rank decides after a round is computed from data every rank holds in the same order, so
// all ranks take the same branch, send the same rounds and return the same token. Errors found in the
// exchanged data (bad options, NaN logits, slices that do not tile) are thrown on every rank after the
// round completes, leaving the communicator consistent; failures of the transport itself abort it.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "collectives/common.h"
#include "collectives/sampling_internal.h"
#include "comm/tags.h"
#include "flashring/sampling.h"

namespace flashring {
namespace {

constexpr int kStepToken = 1000;
constexpr int kStepGatherHeader = 1001;
constexpr int kStepGatherData = 1002;
constexpr int64_t kGrowth = 4;  // candidates per rank grow by this factor per extra round
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Entry {
  float logit;
  int32_t id;
};
static_assert(sizeof(Entry) == 8, "candidates travel as (float logit, int32 id)");

// Candidate order: logit descending, then global id ascending. A total order on distinct ids, the same on
// every TP degree.
bool before(const Entry& a, const Entry& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); }

struct Header {
  uint64_t sampler_seed;
  uint64_t sampler_step;
  int64_t vocab_begin;
  int64_t local_n;
  int64_t vocab_total;
  double sum_raw;  // sum of exp(z - max_logit) over the slice (top-p without top-k: the softmax normaliser)
  double sum_t;    // sum of exp((z - max_logit) / T) over the slice (unfiltered sampling)
  float temperature, top_p, min_p;
  int32_t top_k;
  float max_logit;    // first local maximum; -inf when the slice is empty
  int32_t max_id;     // its global id; -1 when the slice is empty (or all NaN)
  int32_t nan_id;     // lowest global id whose logit is NaN; -1 if none
  int32_t posinf_id;  // lowest global id whose logit is +inf; -1 if none
  int32_t count;      // candidates posted together with this header
  int32_t reserved;
};
static_assert(sizeof(Header) == 96, "the header's wire layout is fixed");

struct GatherHeader {
  int64_t vocab_begin;
  int64_t local_n;
  int64_t vocab_total;
};
static_assert(sizeof(GatherHeader) == 24, "the gather header's wire layout is fixed");

// An error found in data every rank holds: thrown on every rank once the communication is done.
struct Failure {
  bool invalid_argument = false;
  std::string what;
};

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// The same weight expression wherever a slice sum is computed or walked, so a walk reproduces its sum.
inline double weight(float z, float m, double inv_t) {
  return std::exp((static_cast<double>(z) - static_cast<double>(m)) * inv_t);
}

// Ranks in vocabulary order (non-empty slices only), or the reason the slices do not tile [0, V).
struct Tiling {
  std::vector<int> order;
  std::optional<std::string> error;
};

Tiling tile(const std::vector<int64_t>& begin, const std::vector<int64_t>& n, const std::vector<int64_t>& total) {
  Tiling t;
  const int ranks = static_cast<int>(begin.size());
  for (int p = 1; p < ranks; ++p)
    if (total[static_cast<size_t>(p)] != total[0]) {
      t.error = fmt::format("vocab_total differs across ranks: {} on rank 0, {} on rank {}", total[0],
                            total[static_cast<size_t>(p)], p);
      return t;
    }
  const int64_t v = total[0];
  if (v < 1 || v > std::numeric_limits<TokenId>::max()) {
    t.error = fmt::format("vocab_total must be in [1, {}], got {}", std::numeric_limits<TokenId>::max(), v);
    return t;
  }
  for (int p = 0; p < ranks; ++p) {
    const int64_t b = begin[static_cast<size_t>(p)], c = n[static_cast<size_t>(p)];
    if (b < 0 || b > v || c > v - b) {
      t.error = fmt::format("rank {}'s slice [{}, {}) is outside the vocabulary [0, {})", p, b, b + c, v);
      return t;
    }
    if (c > 0) t.order.push_back(p);
  }
  std::sort(t.order.begin(), t.order.end(),
            [&](int a, int b) { return begin[static_cast<size_t>(a)] < begin[static_cast<size_t>(b)]; });
  int64_t at = 0;
  for (int p : t.order) {
    const int64_t b = begin[static_cast<size_t>(p)];
    if (b != at) {
      t.error = b > at ? fmt::format("no rank holds tokens [{}, {}) (rank {}'s slice starts at {})", at, b, p, b)
                       : fmt::format("rank {}'s slice [{}, {}) overlaps tokens before {}", p, b,
                                     b + n[static_cast<size_t>(p)], at);
      return t;
    }
    at = b + n[static_cast<size_t>(p)];
  }
  if (at != v) t.error = fmt::format("no rank holds tokens [{}, {})", at, v);
  return t;
}

class Choice {
 public:
  Choice(Communicator& tp, std::span<const float> z, int64_t vocab_begin, int64_t vocab_total, const SamplingOptions& o,
         Sampler& sampler)
      : tp_(tp), z_(z), begin_(vocab_begin), total_(vocab_total), o_(o), sampler_(sampler) {}

  ChoiceStats stats;
  std::optional<Failure> failure;

  TokenId run() {
    const int n = tp_.size(), me = tp_.rank();
    deadline_ = tp_.deadline();
    Header h = localHeader();
    hs_.assign(static_cast<size_t>(n), Header{});
    hs_[static_cast<size_t>(me)] = h;
    cands_.assign(static_cast<size_t>(n), {});
    sent_.assign(static_cast<size_t>(n), 0);
    cands_[static_cast<size_t>(me)] = localEntries(0, h.count);
    sent_[static_cast<size_t>(me)] = h.count;

    // Round 1: headers, with the candidates they announce posted at once.
    if (n > 1) {
      std::vector<Request> hdr, rest;
      for (int p = 0; p < n; ++p)
        if (p != me) hdr.push_back(tp_.irecv(&hs_[static_cast<size_t>(p)], sizeof(Header), p, tag(0)));
      for (int p = 0; p < n; ++p)
        if (p != me) rest.push_back(send(&hs_[static_cast<size_t>(me)], sizeof(Header), p, tag(0)));
      if (h.count > 0)
        for (int p = 0; p < n; ++p)
          if (p != me) rest.push_back(send(cands_[static_cast<size_t>(me)].data(), bytesOf(h.count), p, tag(1)));
      tp_.waitAll(hdr, deadline_);
      for (int p = 0; p < n; ++p) {
        if (p == me) continue;
        const int32_t c = hs_[static_cast<size_t>(p)].count;
        if (c < 0 || c > hs_[static_cast<size_t>(p)].local_n)
          throw Error(fmt::format("chooseToken: rank {} announced {} candidates for a slice of {}", p, c,
                                  hs_[static_cast<size_t>(p)].local_n),
                      me);
        cands_[static_cast<size_t>(p)].resize(static_cast<size_t>(c));
        sent_[static_cast<size_t>(p)] = c;
        if (c > 0) rest.push_back(tp_.irecv(cands_[static_cast<size_t>(p)].data(), bytesOf(c), p, tag(1)));
      }
      tp_.waitAll(rest, deadline_);
      stats.rounds = 1;
    }
    if (!checkAll()) return -1;
    if (!(o_.temperature > 0.f)) return greedy();
    if (!checkSampling()) return -1;
    const double u = sampler_.nextDouble();
    return full_vocab_ ? sampleFullVocab(u) : sampleCandidates(u);
  }

 private:
  Tag tag(int step) const { return tags::make(tags::kTokenChoice, step); }
  static size_t bytesOf(int64_t entries) { return static_cast<size_t>(entries) * sizeof(Entry); }

  Request send(const void* buf, size_t bytes, int peer, Tag t) {
    stats.bytes_sent += bytes;
    ++stats.messages;
    return tp_.isend(buf, bytes, peer, t);
  }

  // Records an error every rank found in the same data; returns false for the caller to return.
  bool fail(bool invalid, std::string what) {
    failure = Failure{invalid, "chooseToken: " + std::move(what)};
    return false;
  }

  int64_t effectiveTopK() const { return o_.top_k > 0 && o_.top_k < total_ ? o_.top_k : 0; }

  // What this rank tells the others. Computes only what the options need; nothing when they are invalid or
  // the logits hold a NaN / +inf (the choice then fails on every rank anyway).
  Header localHeader() {
    Header h{};
    h.sampler_seed = sampler_.seed();
    h.sampler_step = sampler_.step();
    h.vocab_begin = begin_;
    h.local_n = static_cast<int64_t>(z_.size());
    h.vocab_total = total_;
    h.temperature = o_.temperature;
    h.top_p = o_.top_p;
    h.min_p = o_.min_p;
    h.top_k = o_.top_k;
    h.max_logit = -kInf;
    h.max_id = h.nan_id = h.posinf_id = -1;
    int64_t best = -1;
    for (size_t i = 0; i < z_.size(); ++i) {
      const float v = z_[i];
      if (std::isnan(v)) {
        if (h.nan_id < 0) h.nan_id = globalId(i);
        continue;
      }
      if (v == kInf && h.posinf_id < 0) h.posinf_id = globalId(i);
      if (best < 0 || v > h.max_logit) {
        h.max_logit = v;
        best = static_cast<int64_t>(i);
      }
    }
    if (best >= 0) h.max_id = globalId(static_cast<size_t>(best));
    const bool sampling = detail::samplingOptionsError(o_).empty() && o_.temperature > 0.f;
    const bool sane =
        total_ >= 1 && total_ <= std::numeric_limits<TokenId>::max() && begin_ >= 0 && begin_ + h.local_n <= total_;
    // Path and candidate cap follow from the options alone, so every rank agrees on them.
    full_vocab_ = effectiveTopK() == 0 && !(o_.top_p < 1.f) && !(o_.min_p > 0.f);
    cap_ = effectiveTopK() > 0 ? effectiveTopK() : kSamplingCandidates;
    if (!sampling || !sane || h.nan_id >= 0 || h.posinf_id >= 0 || z_.empty()) return h;
    const float m = h.max_logit;
    if (full_vocab_) {
      inv_t_ = 1.0 / static_cast<double>(o_.temperature);
      h.sum_t = 0;
      if (m != -kInf)
        for (float v : z_) h.sum_t += weight(v, m, inv_t_);
      return h;
    }
    if (effectiveTopK() == 0 && o_.top_p < 1.f && m != -kInf)
      for (float v : z_) h.sum_raw += weight(v, m, 1.0);
    h.count = static_cast<int32_t>(std::min<int64_t>(cap_, h.local_n));
    return h;
  }

  int32_t globalId(size_t i) const { return static_cast<int32_t>(begin_ + static_cast<int64_t>(i)); }

  // Local candidates [from, to) in candidate order (sorting the local order only as far as needed).
  std::vector<Entry> localEntries(int64_t from, int64_t to) {
    std::vector<Entry> out;
    if (to <= from) return out;
    if (from == 0 && to * 16 <= static_cast<int64_t>(z_.size())) return localTop(to);
    if (order_.empty()) {
      order_.resize(z_.size());
      for (size_t i = 0; i < z_.size(); ++i) order_[i] = static_cast<int32_t>(i);
    }
    auto cmp = [&](int32_t a, int32_t b) {
      const float za = z_[static_cast<size_t>(a)], zb = z_[static_cast<size_t>(b)];
      return za > zb || (za == zb && a < b);
    };
    if (to > sorted_) {
      // Select the next (to - sorted_) in linear time, then sort just those.
      if (to < static_cast<int64_t>(order_.size()))
        std::nth_element(order_.begin() + sorted_, order_.begin() + to, order_.end(), cmp);
      std::sort(order_.begin() + sorted_, order_.begin() + to, cmp);
      sorted_ = to;
    }
    out.reserve(static_cast<size_t>(to - from));
    for (int64_t j = from; j < to; ++j) {
      const int32_t i = order_[static_cast<size_t>(j)];
      out.push_back({z_[static_cast<size_t>(i)], globalId(static_cast<size_t>(i))});
    }
    return out;
  }

  // The first `c` local candidates by one pass with a heap of the best so far (the common first round: one
  // comparison per logit once the heap is full; ids ascend, so an equal logit never displaces an entry).
  std::vector<Entry> localTop(int64_t c) {
    std::vector<Entry> heap;  // a max-heap under `before`: front() is the worst kept
    heap.reserve(static_cast<size_t>(c));
    size_t i = 0;
    for (; i < z_.size() && static_cast<int64_t>(heap.size()) < c; ++i) {
      heap.push_back({z_[i], globalId(i)});
      std::push_heap(heap.begin(), heap.end(), before);
    }
    float worst = heap.front().logit;
    for (; i < z_.size(); ++i) {
      if (!(z_[i] > worst)) continue;
      std::pop_heap(heap.begin(), heap.end(), before);
      heap.back() = {z_[i], globalId(i)};
      std::push_heap(heap.begin(), heap.end(), before);
      worst = heap.front().logit;
    }
    std::sort_heap(heap.begin(), heap.end(), before);
    return heap;
  }

  // Checks every rank's header the same way on every rank. False (with `failure` set) on the first problem.
  bool checkAll() {
    const int n = tp_.size();
    const Header& h0 = hs_[0];
    for (int p = 1; p < n; ++p) {
      const Header& h = hs_[static_cast<size_t>(p)];
      auto differs = [&](const char* field, auto a, auto b) {
        return fail(
            true, fmt::format("SamplingOptions.{} differs across ranks: {} on rank 0, {} on rank {}", field, a, b, p));
      };
      if (bits(h.temperature) != bits(h0.temperature)) return differs("temperature", h0.temperature, h.temperature);
      if (h.top_k != h0.top_k) return differs("top_k", h0.top_k, h.top_k);
      if (bits(h.top_p) != bits(h0.top_p)) return differs("top_p", h0.top_p, h.top_p);
      if (bits(h.min_p) != bits(h0.min_p)) return differs("min_p", h0.min_p, h.min_p);
    }
    const std::string opt_err = detail::samplingOptionsError(o_);
    if (!opt_err.empty()) return fail(true, opt_err);
    std::vector<int64_t> b, c, t;
    for (const Header& h : hs_) {
      b.push_back(h.vocab_begin);
      c.push_back(h.local_n);
      t.push_back(h.vocab_total);
    }
    Tiling tl = tile(b, c, t);
    if (tl.error) return fail(true, *tl.error);
    vocab_order_ = std::move(tl.order);
    int32_t nan_id = -1;
    for (const Header& h : hs_)
      if (h.nan_id >= 0 && (nan_id < 0 || h.nan_id < nan_id)) nan_id = h.nan_id;
    if (nan_id >= 0) return fail(false, fmt::format("the logit of token {} is NaN", nan_id));
    return true;
  }

  TokenId greedy() {
    stats.path = ChoicePath::Greedy;
    Entry best{-kInf, -1};
    for (const Header& h : hs_) {
      if (h.max_id < 0) continue;
      const Entry e{h.max_logit, h.max_id};
      if (best.id < 0 || before(e, best)) best = e;
    }
    stats.kept = 1;
    return best.id;
  }

  bool checkSampling() {
    const int n = tp_.size();
    for (int p = 1; p < n; ++p) {
      const Header& h = hs_[static_cast<size_t>(p)];
      if (h.sampler_seed != hs_[0].sampler_seed || h.sampler_step != hs_[0].sampler_step)
        return fail(true, fmt::format("the Sampler differs across ranks: seed {:#x} step {} on rank 0, seed {:#x} "
                                      "step {} on rank {}",
                                      hs_[0].sampler_seed, hs_[0].sampler_step, h.sampler_seed, h.sampler_step, p));
    }
    int32_t inf_id = -1;
    max_ = -kInf;
    for (const Header& h : hs_) {
      if (h.posinf_id >= 0 && (inf_id < 0 || h.posinf_id < inf_id)) inf_id = h.posinf_id;
      if (h.max_id >= 0) max_ = std::max(max_, h.max_logit);
    }
    if (inf_id >= 0)
      return fail(false, fmt::format("the logit of token {} is +inf: sampling needs finite logits", inf_id));
    if (max_ == -kInf) return fail(false, "every logit is -inf: there is no token to sample");
    inv_t_ = 1.0 / static_cast<double>(o_.temperature);
    return true;
  }

  // Unfiltered: pick the slice whose mass holds u (in vocabulary order), walk it on its owner, send the token.
  TokenId sampleFullVocab(double u) {
    stats.path = ChoicePath::FullVocab;
    stats.kept = total_;
    const int me = tp_.rank();
    std::vector<double> mass(hs_.size(), 0.0);
    double z = 0;
    for (int p : vocab_order_) {
      const Header& h = hs_[static_cast<size_t>(p)];
      if (h.max_id >= 0 && h.max_logit != -kInf)
        mass[static_cast<size_t>(p)] = h.sum_t * weight(h.max_logit, max_, inv_t_);
      z += mass[static_cast<size_t>(p)];
    }
    const double x = u * z;
    int owner = -1;
    double before_owner = 0, cum = 0;
    for (int p : vocab_order_) {
      const double m = mass[static_cast<size_t>(p)];
      if (m <= 0) continue;
      owner = p;  // the last slice with mass, should rounding leave x at or past the total
      before_owner = cum;
      if (cum + m > x) break;
      cum += m;
    }
    TokenId tok = -1;
    if (owner == me) {
      const Header& h = hs_[static_cast<size_t>(me)];
      const double y = (x - before_owner) / weight(h.max_logit, max_, inv_t_);
      double c = 0;
      int64_t last_positive = -1;
      for (size_t i = 0; i < z_.size(); ++i) {
        const double w = weight(z_[i], h.max_logit, inv_t_);
        if (w > 0) last_positive = static_cast<int64_t>(i);
        c += w;
        if (c > y && w > 0) {
          tok = globalId(i);
          break;
        }
      }
      if (tok < 0) tok = globalId(static_cast<size_t>(last_positive));
    }
    if (tp_.size() > 1) {
      std::vector<Request> rs;
      if (owner == me) {
        for (int p = 0; p < tp_.size(); ++p)
          if (p != me) rs.push_back(send(&tok, sizeof(tok), p, tag(kStepToken)));
      } else {
        rs.push_back(tp_.irecv(&tok, sizeof(tok), owner, tag(kStepToken)));
      }
      tp_.waitAll(rs, deadline_);
      ++stats.rounds;
    }
    return tok;
  }

  // Adds `fresh` candidates to the merged list (kept in candidate order) and finds how long a prefix of the
  // global order the list is.
  void merge(std::vector<Entry> fresh) {
    std::sort(fresh.begin(), fresh.end(), before);
    const auto mid = static_cast<std::ptrdiff_t>(merged_.size());
    merged_.insert(merged_.end(), fresh.begin(), fresh.end());
    std::inplace_merge(merged_.begin(), merged_.begin() + mid, merged_.end(), before);
    // Tokens a rank has not sent all sort after its last sent candidate: the merged list is exact up to the
    // earliest such last candidate over the ranks that still hold unsent tokens.
    valid_ = static_cast<int64_t>(merged_.size());
    for (size_t p = 0; p < hs_.size(); ++p) {
      if (sent_[p] >= hs_[p].local_n) continue;
      if (cands_[p].empty()) {
        valid_ = 0;
        continue;
      }
      const auto end = std::upper_bound(merged_.begin(), merged_.end(), cands_[p].back(), before);
      valid_ = std::min<int64_t>(valid_, end - merged_.begin());
    }
  }

  // How many of the merged candidates the filters keep, or nullopt when they need more candidates.
  std::optional<int64_t> filter() const {
    const int64_t k = effectiveTopK();
    const int64_t set = k > 0 ? k : total_;  // tokens left after top-k
    const double m = static_cast<double>(max_);
    int64_t keep = set;
    if (o_.top_p < 1.f) {
      double lse;  // log of the softmax normaliser of the top-k survivors
      if (k > 0) {
        double s = 0;
        for (int64_t j = 0; j < k; ++j) s += weight(merged_[static_cast<size_t>(j)].logit, max_, 1.0);
        lse = m + std::log(s);
      } else {
        double s = 0;
        for (int p : vocab_order_) {
          const Header& h = hs_[static_cast<size_t>(p)];
          if (h.max_logit != -kInf) s += h.sum_raw * weight(h.max_logit, max_, 1.0);
        }
        lse = m + std::log(s);
      }
      const int64_t known = std::min(set, valid_);
      double cum = 0;
      std::optional<int64_t> cut;
      for (int64_t j = 0; j < known; ++j) {
        cum += std::exp(static_cast<double>(merged_[static_cast<size_t>(j)].logit) - lse);
        if (cum >= static_cast<double>(o_.top_p)) {
          cut = j + 1;
          break;
        }
      }
      if (!cut && known < set) return std::nullopt;
      keep = cut ? *cut : set;
    }
    if (o_.min_p > 0.f) {
      const double threshold = m + std::log(static_cast<double>(o_.min_p));
      const int64_t known = std::min(keep, valid_);
      int64_t j = 0;
      while (j < known && static_cast<double>(merged_[static_cast<size_t>(j)].logit) >= threshold) ++j;
      if (j == known && known < keep) return std::nullopt;
      keep = j;
    }
    return std::max<int64_t>(keep, 1);
  }

  TokenId sampleCandidates(double u) {
    stats.path = ChoicePath::Candidates;
    const int n = tp_.size(), me = tp_.rank();
    int step = 1;
    std::optional<int64_t> keep;
    std::vector<Entry> fresh_all;
    for (const auto& c : cands_) fresh_all.insert(fresh_all.end(), c.begin(), c.end());
    for (;;) {
      merge(std::move(fresh_all));
      fresh_all.clear();
      keep = filter();
      if (keep) break;
      // More rounds: every rank sends its next candidates; sizes follow from the slices every rank knows.
      const int64_t next = cap_ * kGrowth;
      ++step;
      std::vector<std::vector<Entry>> fresh(static_cast<size_t>(n));
      std::vector<Request> rs;
      for (int p = 0; p < n; ++p) {
        const int64_t from = sent_[static_cast<size_t>(p)];
        const int64_t to = std::min(next, hs_[static_cast<size_t>(p)].local_n);
        if (to <= from) continue;
        if (p == me) {
          fresh[static_cast<size_t>(p)] = localEntries(from, to);
        } else {
          fresh[static_cast<size_t>(p)].resize(static_cast<size_t>(to - from));
          rs.push_back(tp_.irecv(fresh[static_cast<size_t>(p)].data(), bytesOf(to - from), p, tag(step)));
        }
      }
      const auto& mine = fresh[static_cast<size_t>(me)];
      if (!mine.empty())
        for (int p = 0; p < n; ++p)
          if (p != me) rs.push_back(send(mine.data(), bytesOf(static_cast<int64_t>(mine.size())), p, tag(step)));
      tp_.waitAll(rs, deadline_);
      if (n > 1) ++stats.rounds;
      for (int p = 0; p < n; ++p) {
        auto& f = fresh[static_cast<size_t>(p)];
        cands_[static_cast<size_t>(p)].insert(cands_[static_cast<size_t>(p)].end(), f.begin(), f.end());
        fresh_all.insert(fresh_all.end(), f.begin(), f.end());
        sent_[static_cast<size_t>(p)] += static_cast<int64_t>(f.size());
      }
      cap_ = next;
    }
    stats.candidates = static_cast<int64_t>(merged_.size());
    stats.kept = *keep;
    // Softmax of logit / T over the survivors, drawn by inverse CDF in candidate order.
    const size_t kept = static_cast<size_t>(*keep);
    double total = 0;
    for (size_t j = 0; j < kept; ++j) total += weight(merged_[j].logit, max_, inv_t_);
    const double x = u * total;
    double cum = 0;
    size_t last_positive = 0;
    for (size_t j = 0; j < kept; ++j) {
      const double w = weight(merged_[j].logit, max_, inv_t_);
      if (w > 0) last_positive = j;
      cum += w;
      if (cum > x && w > 0) return merged_[j].id;
    }
    return merged_[last_positive].id;
  }

  Communicator& tp_;
  std::span<const float> z_;
  int64_t begin_, total_;
  const SamplingOptions& o_;
  Sampler& sampler_;
  Deadline deadline_{};

  std::vector<Header> hs_;
  std::vector<std::vector<Entry>> cands_;  // per rank, in its candidate order
  std::vector<int64_t> sent_;              // candidates each rank has sent so far
  std::vector<int> vocab_order_;           // ranks with a non-empty slice, in vocabulary order
  std::vector<Entry> merged_;
  int64_t valid_ = 0;
  bool full_vocab_ = false;
  int64_t cap_ = 0;  // candidates per rank requested so far
  std::vector<int32_t> order_;
  int64_t sorted_ = 0;
  float max_ = -kInf;
  double inv_t_ = 1;
};

[[noreturn]] void raise(const Failure& f, int rank) {
  if (f.invalid_argument) throw InvalidArgument(f.what, rank);
  throw Error(f.what, rank);
}

}  // namespace

TokenId chooseToken(Communicator& tp, std::span<const float> local_logits, int64_t vocab_begin, int64_t vocab_total,
                    const SamplingOptions& options, Sampler& sampler, ChoiceStats* stats) {
  Choice c(tp, local_logits, vocab_begin, vocab_total, options, sampler);
  TokenId tok = -1;
  detail::abortOnError(tp, "chooseToken", [&] { tok = c.run(); });
  if (stats) *stats = c.stats;
  if (c.failure) raise(*c.failure, tp.rank());
  return tok;
}

std::vector<float> gatherLogits(Communicator& tp, std::span<const float> local_logits, int64_t vocab_begin,
                                int64_t vocab_total, ChoiceStats* stats) {
  ChoiceStats st;
  st.path = ChoicePath::Gather;
  std::vector<float> full;
  std::optional<Failure> failure;
  detail::abortOnError(tp, "gatherLogits", [&] {
    const int n = tp.size(), me = tp.rank();
    const Deadline deadline = tp.deadline();
    const Tag th = tags::make(tags::kTokenChoice, kStepGatherHeader);
    const Tag td = tags::make(tags::kTokenChoice, kStepGatherData);
    std::vector<GatherHeader> hs(static_cast<size_t>(n));
    hs[static_cast<size_t>(me)] = {vocab_begin, static_cast<int64_t>(local_logits.size()), vocab_total};
    std::vector<Request> hdr, rest;
    auto send = [&](const void* buf, size_t bytes, int p, Tag t) {
      st.bytes_sent += bytes;
      ++st.messages;
      rest.push_back(tp.isend(buf, bytes, p, t));
    };
    for (int p = 0; p < n; ++p)
      if (p != me) hdr.push_back(tp.irecv(&hs[static_cast<size_t>(p)], sizeof(GatherHeader), p, th));
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      send(&hs[static_cast<size_t>(me)], sizeof(GatherHeader), p, th);
      if (!local_logits.empty()) send(local_logits.data(), local_logits.size_bytes(), p, td);
    }
    tp.waitAll(hdr, deadline);
    std::vector<int64_t> b, c, t;
    for (const GatherHeader& h : hs) {
      b.push_back(h.vocab_begin);
      c.push_back(h.local_n);
      t.push_back(h.vocab_total);
    }
    Tiling tl = tile(b, c, t);
    // Receive every announced slice even when the tiling is wrong, so no message is left behind.
    std::vector<std::vector<float>> stray;
    if (!tl.error) full.assign(static_cast<size_t>(vocab_total), 0.f);
    for (int p = 0; p < n; ++p) {
      const GatherHeader& h = hs[static_cast<size_t>(p)];
      if (p == me || h.local_n <= 0) continue;
      float* dst;
      if (tl.error) {
        stray.emplace_back(static_cast<size_t>(h.local_n));
        dst = stray.back().data();
      } else {
        dst = full.data() + h.vocab_begin;
      }
      rest.push_back(tp.irecv(dst, static_cast<size_t>(h.local_n) * sizeof(float), p, td));
    }
    tp.waitAll(rest, deadline);
    if (n > 1) st.rounds = 1;
    if (tl.error) {
      failure = Failure{true, "gatherLogits: " + *tl.error};
      full.clear();
      return;
    }
    if (!local_logits.empty()) std::memcpy(full.data() + vocab_begin, local_logits.data(), local_logits.size_bytes());
  });
  if (stats) *stats = st;
  if (failure) raise(*failure, tp.rank());
  return full;
}

}  // namespace flashring
