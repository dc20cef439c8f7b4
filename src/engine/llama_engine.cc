// The LLaMA forward pass with tensor and sequence parallelism (see include/flashring/llama.h): the
// engine's state (KV cache, groups), the transformer blocks, decode and the vocabulary-parallel head.
// Compute goes through the backend (engine/ops.h), communication through collectives/ and attention/.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "collectives/common.h"
#include "comm/tags.h"
#include "engine/ops.h"
#include "flashring/allgather.h"
#include "flashring/attention.h"
#include "flashring/costmodel.h"
#include "flashring/cpu.h"
#include "flashring/gguf.h"
#include "flashring/group_comm.h"
#include "flashring/llama.h"
#include "flashring/sampling.h"

namespace flashring {
namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Engine

struct LlamaEngine::Impl {
  Communicator& world;
  std::shared_ptr<const LlamaWeights> w;
  EngineOptions opts;
  const LlamaConfig& cfg;
  const TpShard& shard;
  int tp_rank, sp_rank;
  std::unique_ptr<GroupCommunicator> tp_group, sp_group;
  Communicator* tp_comm;
  Communicator* sp_comm;
  std::unique_ptr<CostModel> own_model;
  const CostModel* model = nullptr;
  std::unique_ptr<engine::Backend> ops = engine::makeCpuBackend();
  Sampler sampler;
  // This rank's scratch for every collective and attention call (workspace.h): one per engine, so after the
  // first prompt and decode step of a length the forward pass allocates no communication or attention
  // buffers. Options' workspace fields are replaced by it (engines of one process are different ranks).
  Workspace ws;

  int kvh;  // local KV heads (after replication)
  // KV cache, per layer [len, kvh, hd], holding this rank's tokens (prompt shard, plus decoded tokens on the
  // owner).
  std::vector<std::vector<float>> k_cache, v_cache;
  int64_t local_len = 0;
  int64_t global_len = 0;
  int owner = 0;
  std::vector<float> last_logits;
  EngineStats st;

  // Scratch.
  std::vector<float> x, h, q, att, o, g, u;
  std::vector<float> carry;                      // error feedback (EngineOptions::error_feedback) and refinement
  std::vector<float> refined;                    // refinement: the summed errors (EngineOptions::refine_layers)
  bool appending = false;                        // blocks() in append mode (decode, turns over the cache)
  SpScheme append_scheme = SpScheme::TokenRing;  // in append mode: pass-Q (TokenRing) or pass-KV (AllGatherKV)
  AllreduceOptions oneshot_opts;

  Impl(Communicator& wc, std::shared_ptr<const LlamaWeights> weights, const EngineOptions& o_)
      : world(wc), w(std::move(weights)), opts(o_), cfg(w->cfg), shard(w->shard) {
    opts.allreduce.workspace = &ws;
    if (opts.tp < 1 || opts.sp < 1 || opts.tp * opts.sp != world.size())
      throw InvalidArgument(fmt::format("LlamaEngine: tp {} x sp {} != {} ranks", opts.tp, opts.sp, world.size()),
                            world.rank());
    checkRefineLayers(opts.refine_layers);
    validateSamplingOptions(opts.sampling);
    sampler = Sampler(opts.sampling);
    tp_rank = world.rank() % opts.tp;
    sp_rank = world.rank() / opts.tp;
    if (w->tp != opts.tp || w->tp_rank != tp_rank)
      throw InvalidArgument(fmt::format("LlamaEngine: weights are shard {} of {}, rank needs shard {} of {}",
                                        w->tp_rank, w->tp, tp_rank, opts.tp),
                            world.rank());
    // The grid's rows and columns share no pair of ranks, so the groups cannot mix messages (group_comm.h).
    if (opts.tp == world.size()) {
      tp_comm = &world;
    } else {
      std::vector<int> m;
      for (int t = 0; t < opts.tp; ++t) m.push_back(sp_rank * opts.tp + t);
      tp_group = std::make_unique<GroupCommunicator>(world, m);
      tp_comm = tp_group.get();
    }
    if (opts.sp == world.size()) {
      sp_comm = &world;
    } else {
      std::vector<int> m;
      for (int s = 0; s < opts.sp; ++s) m.push_back(s * opts.tp + tp_rank);
      sp_group = std::make_unique<GroupCommunicator>(world, m);
      sp_comm = sp_group.get();
    }
    kvh = static_cast<int>(shard.kv_heads.size());
    k_cache.resize(static_cast<size_t>(cfg.n_layer));
    v_cache.resize(static_cast<size_t>(cfg.n_layer));
    if (opts.threads > 0) cpu::setThreads(opts.threads);
    if (opts.append_attention != SpScheme::Auto && opts.append_attention != SpScheme::TokenRing &&
        opts.append_attention != SpScheme::AllGatherKV)
      throw InvalidArgument(fmt::format("append attention: {} is not one of auto, tokenring (pass-Q), allgather-kv "
                                        "(pass-KV)",
                                        spSchemeName(opts.append_attention)),
                            world.rank());
    model = opts.cost_model;
    if (opts.sp > 1 && opts.attention == SpScheme::Auto && model == nullptr) {
      own_model = std::make_unique<CostModel>(CostModel::calibrate(*sp_comm));
      model = own_model.get();
    }
  }

  // Runs `body`, adding its wall time and the communicator bytes to the stats.
  template <typename F>
  void timed(F&& body) {
    // Group sends are posted on the world communicator, which counts them.
    const uint64_t b0 = world.bytesSent();
    detail::Stopwatch sw(st.wall_s);
    body();
    st.wire_bytes += world.bytesSent() - b0;
  }

  void checkRefineLayers(int n) const {
    if (n < 0) throw InvalidArgument(fmt::format("LlamaEngine: refine_layers {} < 0", n), world.rank());
  }

  // Whether the TP all-reduce makes errors worth carrying or refining (Ring and Native leave the error zero;
  // the fp32 two-step is exact).
  bool allreduceErrs(const AllreduceOptions& ao) const {
    const AllreduceAlgorithm a = ao.algorithm;
    return opts.tp > 1 && a != AllreduceAlgorithm::Ring && a != AllreduceAlgorithm::Native &&
           !((a == AllreduceAlgorithm::TwoStep || (a == AllreduceAlgorithm::OneShot && !ao.oneshot_quantized)) &&
             ao.payload == Payload::F32);
  }

  void countAllreduce(const AllreduceStats& as, const AllreduceOptions& ao) {
    st.quant_s += as.codec_s;
    st.comm_s += as.wait_s;
    ++st.allreduces;
    // Message rounds of the all-reduce that ran (decode-sized buffers are one chunk).
    const AllreduceAlgorithm a = as.algorithm;
    if (opts.tp > 1)
      st.allreduce_rounds += a == AllreduceAlgorithm::OneShot ? 1
                             : a == AllreduceAlgorithm::Ring  ? 2 * (opts.tp - 1)
                             : a == AllreduceAlgorithm::Hierarchical
                                 ? (ao.hier.inter_oneshot ? 3 : 4)  // intra, inter, intra
                                 : 2;
  }

  // The all-reduce options for a buffer of n floats: the user's, or in append mode (decode, short turns)
  // their one-shot twin (EngineOptions::oneshot): same codec, one message round instead of two.
  const AllreduceOptions& allreduceFor(size_t n) {
    const AllreduceAlgorithm a = opts.allreduce.algorithm;
    const bool hier_twin = a == AllreduceAlgorithm::Hierarchical && !opts.allreduce.hier.inter_oneshot;
    const bool twin_exists = a == AllreduceAlgorithm::TwoStep || a == AllreduceAlgorithm::Quantized || hier_twin;
    const bool small = n * sizeof(float) < opts.allreduce.oneshot_threshold_bytes;
    if (!appending || !twin_exists || opts.oneshot == OneShotMode::Off || (opts.oneshot == OneShotMode::Auto && !small))
      return opts.allreduce;
    oneshot_opts = opts.allreduce;
    if (hier_twin) {  // across the nodes in one round: hier-<intra>-oneshot-<inter>
      oneshot_opts.hier.inter_oneshot = true;
      return oneshot_opts;
    }
    oneshot_opts.algorithm = AllreduceAlgorithm::OneShot;
    oneshot_opts.oneshot_quantized = a == AllreduceAlgorithm::Quantized;
    return oneshot_opts;
  }

  void tpAllreduce(int layer, int which, float* data, size_t n) {
    const AllreduceOptions& ao = allreduceFor(n);
    if (opts.tp > 1) {
      const bool refine = layer < opts.refine_layers && allreduceErrs(ao);
      AllreduceStats as;
      if (opts.error_feedback || refine) {
        // carry: this rank's share of the previous all-reduce's error in this forward pass (zeroed by blocks();
        // without error feedback it is only the refinement's scratch and always zero here).
        for (size_t i = 0; i < n; ++i) data[i] += carry[i];
        allreduceWithError(*tp_comm, std::span<float>(data, n), std::span<float>(carry.data(), n), ao, &as);
      } else {
        allreduce(*tp_comm, std::span<float>(data, n), ao, &as);
      }
      countAllreduce(as, ao);
      if (refine) {
        // The errors just made, summed at once and added: what is left is the error of quantizing them.
        refined.assign(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n));
        AllreduceStats rs;
        if (opts.error_feedback) {
          allreduceWithError(*tp_comm, std::span<float>(refined.data(), n), std::span<float>(carry.data(), n), ao, &rs);
        } else {
          allreduce(*tp_comm, std::span<float>(refined.data(), n), ao, &rs);
          std::fill(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n), 0.f);
        }
        countAllreduce(rs, ao);
        for (size_t i = 0; i < n; ++i) data[i] += refined[i];
      }
    }
    if (opts.on_allreduce) opts.on_allreduce(layer, which, std::span<const float>(data, n));
  }

  // Error feedback's last step: nothing follows the last all-reduce to take its error, so the ranks' carries
  // are summed by one more all-reduce (same options) and added to the residual stream. Its own error is that
  // of quantizing the (small) error, not the activations. Skipped where the algorithm makes no error to carry.
  void flushErrorFeedback(size_t n) {
    const AllreduceOptions& ao = allreduceFor(n);
    if (!opts.error_feedback || !allreduceErrs(ao)) return;
    o.assign(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n));
    AllreduceStats as;
    allreduce(*tp_comm, std::span<float>(o.data(), n), ao, &as);
    countAllreduce(as, ao);
    for (size_t i = 0; i < n; ++i) x[i] += o[i];
    if (opts.on_allreduce) opts.on_allreduce(cfg.n_layer, 2, std::span<const float>(o.data(), n));
  }

  // The transformer blocks over `len` tokens of this rank at global positions `pos`, appending their K/V to
  // the cache. On return x holds the final hidden states (before the output norm).
  // Prompt mode: the tokens are this rank's SP shard of a `global` long sequence and the attention is
  // spAttention. Append mode (`decode`): `appended` new tokens after the cache (decode: one), all on the
  // owner group, attending by pass-Q over the SP ranks' caches; the other SP groups call with len 0 and
  // serve the owner's queries.
  void blocks(const TokenId* tokens, int64_t len, const int64_t* pos, int64_t global, bool decode,
              int64_t appended = 0) {
    const int D = cfg.n_embd, hd = cfg.head_dim, H = shard.heads;
    const size_t qdim = static_cast<size_t>(H) * hd, kvdim = static_cast<size_t>(kvh) * hd;
    const bool am_owner = !decode || sp_rank == owner;
    appending = decode;
    if (decode) {
      append_scheme = appendScheme(appended, global - appended);
      st.last_append_scheme = opts.sp > 1 ? append_scheme : SpScheme::Auto;
    }
    x.assign(static_cast<size_t>(len) * D, 0.f);
    carry.assign(opts.error_feedback || opts.refine_layers > 0 ? x.size() : 0, 0.f);
    for (int64_t t = 0; t < len; ++t) w->embed(tokens[t], x.data() + t * D);
    h.resize(std::max<size_t>(x.size(), 1));
    q.resize(std::max<size_t>(len * qdim, 1));
    att.resize(std::max<size_t>(len * qdim, 1));
    o.resize(std::max<size_t>(x.size(), 1));
    g.resize(std::max<size_t>(static_cast<size_t>(len) * shard.ff, 1));
    u.resize(g.size());
    const engine::RopeTable rt(pos, len, cfg.rope_dim, cfg.rope_base);
    for (int l = 0; l < cfg.n_layer; ++l) {
      const LlamaLayerWeights& L = w->layers[static_cast<size_t>(l)];
      auto& kc = k_cache[static_cast<size_t>(l)];
      auto& vc = v_cache[static_cast<size_t>(l)];
      if (am_owner) {
        ops->rmsNorm(x.data(), L.attn_norm.data(), len, D, cfg.rms_eps, h.data());
        ops->linear(L.wq, h.data(), len, q.data());
        const size_t at = static_cast<size_t>(local_len) * kvdim;
        kc.resize(at + len * kvdim);
        vc.resize(at + len * kvdim);
        ops->linear(L.wk, h.data(), len, kc.data() + at);
        ops->linear(L.wv, h.data(), len, vc.data() + at);
        ops->rope(q.data(), len, H, hd, rt);
        ops->rope(kc.data() + at, len, kvh, hd, rt);
      }
      if (!decode) {
        SpShape shape{1, global, H, kvh, hd};
        SpAttentionOptions so;
        so.scheme = opts.attention;
        so.layout = opts.layout;
        so.causal = true;
        so.model = model;
        so.workspace = &ws;
        SpAttentionStats ss;
        spAttention(*sp_comm, q.data(), kc.data(), vc.data(), shape, so, att.data(), &ss);
        st.comm_s += ss.comm_s;
        st.attn_s += ss.compute_s;
        st.last_scheme = opts.sp > 1 ? ss.scheme : SpScheme::Auto;
      } else {
        decodeAttention(l, am_owner, appended);
      }
      if (!am_owner) continue;
      ops->linear(L.wo, att.data(), len, o.data());
      tpAllreduce(l, 0, o.data(), static_cast<size_t>(len) * D);
      for (size_t i = 0; i < static_cast<size_t>(len) * D; ++i) x[i] += o[i];
      ops->rmsNorm(x.data(), L.ffn_norm.data(), len, D, cfg.rms_eps, h.data());
      ops->linear(L.w_gate, h.data(), len, g.data());
      ops->linear(L.w_up, h.data(), len, u.data());
      ops->swiglu(g.data(), u.data(), static_cast<size_t>(len) * shard.ff);
      ops->linear(L.w_down, g.data(), len, o.data());
      tpAllreduce(l, 1, o.data(), static_cast<size_t>(len) * D);
      for (size_t i = 0; i < static_cast<size_t>(len) * D; ++i) x[i] += o[i];
    }
    if (am_owner) {
      flushErrorFeedback(static_cast<size_t>(len) * D);
      local_len += len;
    }
  }

  // Append mode: pass-Q or pass-KV for `appended` tokens after a cache of `global_cached` entries (every SP
  // rank computes the same answer: the inputs are the same everywhere).
  SpScheme appendScheme(int64_t appended, int64_t global_cached) const {
    if (opts.sp == 1) return SpScheme::TokenRing;
    if (opts.append_attention != SpScheme::Auto) return opts.append_attention;
    const SpQueryShape s{static_cast<int>(appended), shard.heads, kvh, cfg.head_dim};
    return chooseAppendScheme(model != nullptr ? model->params() : CostModelParams{}, s, global_cached / opts.sp,
                              opts.sp);
  }

  // Append mode: the new tokens' queries against the SP ranks' caches (attention/pass_q.cc).
  void decodeAttention(int layer, bool am_owner, int64_t appended) {
    const int64_t kv_len = am_owner ? local_len + appended : local_len;
    SpQueryShape s{static_cast<int>(appended), shard.heads, kvh, cfg.head_dim};
    SpAttentionStats ss;
    auto* run = append_scheme == SpScheme::AllGatherKV ? &spPassKVAttention : &spPassQAttention;
    run(*sp_comm, owner, am_owner ? q.data() : nullptr, k_cache[static_cast<size_t>(layer)].data(),
        v_cache[static_cast<size_t>(layer)].data(), kv_len, s, layer, am_owner ? att.data() : nullptr, &ss, &ws);
    st.comm_s += ss.comm_s;
    st.attn_s += ss.compute_s;
  }

  // Vocab-parallel logits of `rows` hidden states (after the output norm): this rank's slice.
  std::vector<float> logitSlice(const float* hidden, int64_t rows) {
    std::vector<float> z(static_cast<size_t>(rows) * shard.vocab);
    ops->linear(w->output, hidden, rows, z.data());
    return z;
  }

  // The owner group computes the next token from the last hidden state (x row `row`); the other SP groups
  // receive it from the owner rank of their own TP index.
  TokenId nextToken(int64_t row) {
    TokenId tok = -1;
    if (sp_rank == owner) {
      std::vector<float> hn(static_cast<size_t>(cfg.n_embd));
      ops->rmsNorm(x.data() + row * cfg.n_embd, w->output_norm.data(), 1, cfg.n_embd, cfg.rms_eps, hn.data());
      const std::vector<float> z = logitSlice(hn.data(), 1);
      detail::Stopwatch sw(st.comm_s);
      // The token is chosen from the TP ranks' vocabulary slices (sampling.h: a few candidates or one
      // (value, id) pair each); the full logits travel only when the caller asked for them.
      ChoiceStats cs;
      tok = chooseToken(*tp_comm, z, shard.vocab_begin, cfg.n_vocab, opts.sampling, sampler, &cs);
      st.choice_bytes += cs.bytes_sent;
      st.choice_rounds += cs.rounds;
      if (opts.keep_logits) {
        last_logits = gatherLogits(*tp_comm, z, shard.vocab_begin, cfg.n_vocab, &cs);
      } else {
        last_logits.clear();
      }
    } else {
      last_logits.clear();
    }
    if (opts.sp > 1) {
      detail::Stopwatch sw(st.comm_s);
      Communicator& c = *sp_comm;
      const Tag tag = tags::make(tags::kEngineToken, 0);
      // The other SP groups keep their samplers in step with the owner's (a later owner continues the stream).
      struct {
        int64_t tok;
        uint64_t step;
      } msg{tok, sampler.step()};
      if (sp_rank == owner) {
        std::vector<Request> rs;
        for (int s = 0; s < opts.sp; ++s)
          if (s != owner) rs.push_back(c.isend(&msg, sizeof(msg), s, tag));
        c.waitAll(rs, c.deadline());
      } else {
        Request r = c.irecv(&msg, sizeof(msg), owner, tag);
        c.wait(r, c.deadline());
        tok = static_cast<TokenId>(msg.tok);
        sampler.seek(msg.step);
      }
    }
    return tok;
  }

  // This rank's shard of a prompt: token ids and global positions.
  void shardOf(std::span<const TokenId> tokens, std::vector<TokenId>& ids, std::vector<int64_t>& pos) const {
    ids.clear();
    pos.clear();
    for (const Segment& sg : localSegments(static_cast<int64_t>(tokens.size()), opts.sp, sp_rank, opts.layout))
      for (int64_t i = 0; i < sg.length; ++i) {
        pos.push_back(sg.global_offset + i);
        ids.push_back(tokens[static_cast<size_t>(sg.global_offset + i)]);
      }
  }

  void checkPrompt(std::span<const TokenId> tokens, const char* what) {
    checkSameOnAllRanks(world, tokens.size(), what);
    if (tokens.empty()) throw InvalidArgument(fmt::format("{}: empty token sequence", what), world.rank());
    for (TokenId t : tokens)
      if (t < 0 || t >= cfg.n_vocab)
        throw InvalidArgument(fmt::format("{}: token id {} is outside the vocabulary [0, {})", what, t, cfg.n_vocab),
                              world.rank());
  }

  void resetCache() {
    for (auto& k : k_cache) k.clear();
    for (auto& v : v_cache) v.clear();
    local_len = 0;
    global_len = 0;
  }

  // Prompt forward of this rank's shard; x holds the hidden states of the shard's tokens afterwards.
  void prompt(std::span<const TokenId> tokens, std::vector<int64_t>& pos) {
    resetCache();
    std::vector<TokenId> ids;
    shardOf(tokens, ids, pos);
    const int64_t n = static_cast<int64_t>(tokens.size());
    blocks(ids.data(), static_cast<int64_t>(ids.size()), pos.data(), n, false);
    global_len = n;
    // The owner holds position n-1.
    for (int s = 0; s < opts.sp; ++s)
      for (const Segment& sg : localSegments(n, opts.sp, s, opts.layout))
        if (sg.length > 0 && sg.global_offset + sg.length == n) owner = s;
  }
};

LlamaEngine::LlamaEngine(Communicator& world, std::shared_ptr<const LlamaWeights> weights, const EngineOptions& opts) {
  detail::abortOnError(world, "LlamaEngine", [&] { impl_ = std::make_unique<Impl>(world, std::move(weights), opts); });
}

LlamaEngine::~LlamaEngine() = default;

TokenId LlamaEngine::prefill(std::span<const TokenId> tokens) {
  Impl& m = *impl_;
  TokenId next = -1;
  detail::abortOnError(m.world, "prefill", [&] {
    m.checkPrompt(tokens, "prefill");
    m.timed([&] {
      std::vector<int64_t> pos;
      m.prompt(tokens, pos);
      int64_t row = -1;
      for (size_t i = 0; i < pos.size(); ++i)
        if (pos[i] == static_cast<int64_t>(tokens.size()) - 1) row = static_cast<int64_t>(i);
      next = m.nextToken(row < 0 ? 0 : row);
    });
  });
  return next;
}

TokenId LlamaEngine::decode(TokenId token) { return append(std::span<const TokenId>(&token, 1)); }

TokenId LlamaEngine::append(std::span<const TokenId> tokens) {
  Impl& m = *impl_;
  TokenId next = -1;
  detail::abortOnError(m.world, "append", [&] {
    if (m.global_len == 0) throw InvalidArgument("decode/append before prefill", m.world.rank());
    m.checkPrompt(tokens, "append");
    const int64_t T = static_cast<int64_t>(tokens.size());
    if (T > std::numeric_limits<int>::max() / 2)
      throw InvalidArgument(fmt::format("append: {} tokens in one call", T), m.world.rank());
    m.timed([&] {
      std::vector<int64_t> pos(static_cast<size_t>(T));
      std::iota(pos.begin(), pos.end(), m.global_len);
      const bool owner = m.sp_rank == m.owner;
      m.blocks(tokens.data(), owner ? T : 0, pos.data(), m.global_len + T, true, T);
      m.global_len += T;
      next = m.nextToken(T - 1);
    });
  });
  return next;
}

const std::vector<float>& LlamaEngine::lastLogits() const { return impl_->last_logits; }
int64_t LlamaEngine::position() const { return impl_->global_len; }

LlamaEngine::Score LlamaEngine::score(std::span<const TokenId> tokens, int64_t first) {
  Impl& m = *impl_;
  Score result;
  detail::abortOnError(m.world, "score", [&] {
    m.checkPrompt(tokens, "score");
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (first < 0 || first >= n - 1)
      throw InvalidArgument(fmt::format("score: first scored position {} must be in [0, {})", first, n - 1),
                            m.world.rank());
    m.timed([&] {
      std::vector<int64_t> pos;
      m.prompt(tokens, pos);
      // Rows of this shard that predict a scored token: position p predicts tokens[p + 1].
      std::vector<int64_t> rows;
      for (size_t i = 0; i < pos.size(); ++i)
        if (pos[i] >= first && pos[i] < n - 1) rows.push_back(static_cast<int64_t>(i));
      const int D = m.cfg.n_embd;
      std::vector<float> hn(rows.size() * static_cast<size_t>(D));
      for (size_t i = 0; i < rows.size(); ++i)
        m.ops->rmsNorm(m.x.data() + rows[i] * D, m.w->output_norm.data(), 1, D, m.cfg.rms_eps, hn.data() + i * D);
      std::vector<float> z = m.logitSlice(hn.data(), static_cast<int64_t>(rows.size()));
      // Per row: the slice's log-sum-exp and the target's logit when this slice holds it (else -inf).
      const int V = m.shard.vocab, v0 = m.shard.vocab_begin;
      std::vector<float> stats(rows.size() * 2);
      for (size_t i = 0; i < rows.size(); ++i) {
        const float* zr = z.data() + i * V;
        float mx = kNegInf;
        for (int j = 0; j < V; ++j) mx = std::max(mx, zr[j]);
        double s = 0;
        for (int j = 0; j < V; ++j) s += std::exp(double(zr[j]) - mx);
        stats[2 * i] = V > 0 ? static_cast<float>(mx + std::log(s)) : kNegInf;
        const TokenId target = tokens[static_cast<size_t>(pos[static_cast<size_t>(rows[i])] + 1)];
        stats[2 * i + 1] = (target >= v0 && target < v0 + V) ? zr[target - v0] : kNegInf;
      }
      std::vector<std::vector<uint8_t>> all;
      {
        detail::Stopwatch sw(m.st.comm_s);
        all = allgatherv(*m.tp_comm, stats.data(),
                         std::vector<size_t>(static_cast<size_t>(m.opts.tp), stats.size() * sizeof(float)), 1);
      }
      double nll = 0, nll_sq = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        double mx = -std::numeric_limits<double>::infinity(), target = -std::numeric_limits<double>::infinity();
        for (int t = 0; t < m.opts.tp; ++t) {
          const float* s = reinterpret_cast<const float*>(all[static_cast<size_t>(t)].data());
          mx = std::max(mx, double(s[2 * i]));
          target = std::max(target, double(s[2 * i + 1]));
        }
        double sum = 0;
        for (int t = 0; t < m.opts.tp; ++t)
          sum += std::exp(double(reinterpret_cast<const float*>(all[static_cast<size_t>(t)].data())[2 * i]) - mx);
        const double e = mx + std::log(sum) - target;
        nll += e;
        nll_sq += e * e;
      }
      // Each SP group counts its own rows once (its TP rank 0 reports; the others add zero).
      const bool reporter = m.tp_rank == 0;
      detail::Stopwatch sw(m.st.comm_s);
      result.nll = allreduceSumDouble(m.world, reporter ? nll : 0.0);
      result.nll_sq = allreduceSumDouble(m.world, reporter ? nll_sq : 0.0);
      result.count = static_cast<int64_t>(
          std::llround(allreduceSumDouble(m.world, reporter ? static_cast<double>(rows.size()) : 0.0)));
    });
  });
  return result;
}

std::vector<float> LlamaEngine::allLogits(std::span<const TokenId> tokens) {
  Impl& m = *impl_;
  std::vector<float> full;
  detail::abortOnError(m.world, "allLogits", [&] {
    m.checkPrompt(tokens, "allLogits");
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<int64_t> pos;
    m.timed([&] { m.prompt(tokens, pos); });  // the stats count the forward pass, not the gather below
    const int D = m.cfg.n_embd, V = m.cfg.n_vocab;
    const int64_t len = static_cast<int64_t>(pos.size());
    std::vector<float> hn(static_cast<size_t>(len) * D);
    m.ops->rmsNorm(m.x.data(), m.w->output_norm.data(), len, D, m.cfg.rms_eps, hn.data());
    std::vector<float> z = m.logitSlice(hn.data(), len);
    // Gather every rank's (positions x vocab slice) block over the world.
    std::vector<size_t> sizes;
    for (int r = 0; r < m.world.size(); ++r) {
      const int s = r / m.opts.tp, t = r % m.opts.tp;
      sizes.push_back(static_cast<size_t>(localLength(n, m.opts.sp, s, m.opts.layout)) *
                      static_cast<size_t>(tpShard(m.cfg, m.opts.tp, t).vocab) * sizeof(float));
    }
    auto all = allgatherv(m.world, z.data(), sizes, 2);
    full.assign(static_cast<size_t>(n) * V, 0.f);
    for (int r = 0; r < m.world.size(); ++r) {
      const int s = r / m.opts.tp, t = r % m.opts.tp;
      const TpShard sh = tpShard(m.cfg, m.opts.tp, t);
      const float* src = reinterpret_cast<const float*>(all[static_cast<size_t>(r)].data());
      int64_t i = 0;
      for (const Segment& sg : localSegments(n, m.opts.sp, s, m.opts.layout))
        for (int64_t j = 0; j < sg.length; ++j, ++i)
          std::memcpy(full.data() + (sg.global_offset + j) * V + sh.vocab_begin, src + i * sh.vocab,
                      static_cast<size_t>(sh.vocab) * sizeof(float));
    }
  });
  return full;
}

void LlamaEngine::setAllreduceOptions(const AllreduceOptions& options) {
  impl_->opts.allreduce = options;
  impl_->opts.allreduce.workspace = &impl_->ws;
}
void LlamaEngine::setSampling(const SamplingOptions& options) {
  validateSamplingOptions(options);
  impl_->opts.sampling = options;
  impl_->sampler = Sampler(options);
}
void LlamaEngine::setKeepLogits(bool keep) { impl_->opts.keep_logits = keep; }
void LlamaEngine::setOneShot(OneShotMode mode) { impl_->opts.oneshot = mode; }
void LlamaEngine::setErrorCorrection(bool error_feedback, int refine_layers) {
  impl_->checkRefineLayers(refine_layers);
  impl_->opts.error_feedback = error_feedback;
  impl_->opts.refine_layers = refine_layers;
}
const EngineStats& LlamaEngine::stats() const { return impl_->st; }
void LlamaEngine::resetStats() { impl_->st = EngineStats{}; }
int LlamaEngine::tpRank() const { return impl_->tp_rank; }
int LlamaEngine::spRank() const { return impl_->sp_rank; }
int LlamaEngine::ownerSpRank() const { return impl_->owner; }
const LlamaConfig& LlamaEngine::config() const { return impl_->cfg; }
Communicator& LlamaEngine::tpComm() { return *impl_->tp_comm; }
Communicator& LlamaEngine::spComm() { return *impl_->sp_comm; }

}  // namespace flashring
