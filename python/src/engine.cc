// The LLaMA engine for Python: a LlamaSession (flashring/llama_session.h) on thread ranks or on one rank of a
// flashring communicator. flashring.Llama (python/flashring/engine.py) is the public API around it; every call
// that computes, loads or communicates releases the GIL.
#include <fmt/format.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "flashring/error.h"
#include "flashring/llama_session.h"
#include "flashring/model_path.h"

namespace flashring::py {

namespace {

// The session and what keeps a caller's communicator alive.
struct Session {
  std::shared_ptr<void> keep;  // the communicator's owner (a thread world, a split, an MPI communicator)
  std::unique_ptr<LlamaSession> s;
  LlamaSession& get() const {
    if (!s || s->closed()) throw InvalidArgument("the Llama session is closed");
    return *s;
  }
};

nb::bytes toBytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

nb::dict resultDict(const GenerateResult& r) {
  nb::dict d;
  d["tokens"] = r.reply;
  d["prompt_tokens"] = r.run_tokens;
  d["generated_tokens"] = static_cast<int64_t>(r.reply.size());
  d["stop"] = r.stop;
  d["cache_tokens"] = r.cache_after;
  d["ttft_ms"] = r.ttft_s * 1e3;
  d["prefill_tok_s"] = r.prefillTokS();
  d["decode_tok_s"] = r.decodeTokS();
  d["decode_ms"] = r.decode_s * 1e3;
  d["comm_ms"] = r.comm_s * 1e3;
  d["quant_ms"] = r.quant_s * 1e3;
  d["compute_ms"] = r.compute_s * 1e3;
  d["attn_ms"] = r.attn_s * 1e3;
  d["wire_bytes"] = r.prefill_wire_bytes;
  d["wire_bytes_with_decode"] = r.wire_bytes;
  d["attn_scheme"] = spSchemeName(r.scheme);
  return d;
}

nb::dict pplDict(const PerplexityResult& r) {
  nb::dict d;
  d["ppl"] = r.ppl;
  d["ppl_err"] = r.ppl_err;
  d["tokens"] = r.tokens;
  d["text_tokens"] = r.text_tokens;
  d["chunks"] = r.windows;
  d["ctx"] = r.n_ctx;
  d["seconds"] = r.seconds;
  d["comm_ms"] = r.comm_s * 1e3;
  d["quant_ms"] = r.quant_s * 1e3;
  d["wire_bytes"] = r.wire_bytes;
  if (r.kl) {
    d["exact_ppl"] = r.kl->base_ppl;
    d["kl_divergence"] = r.kl->kld;
    d["ln_ppl_ratio"] = r.kl->ln_ratio;
    d["ln_ppl_ratio_err"] = r.kl->ln_ratio_err;
    d["same_top1"] = r.kl->same_top1;
  }
  return d;
}

nb::dict configDict(const LlamaConfig& c) {
  nb::dict d;
  d["arch"] = c.arch;
  d["name"] = c.name;
  d["n_layer"] = c.n_layer;
  d["n_embd"] = c.n_embd;
  d["n_head"] = c.n_head;
  d["n_head_kv"] = c.n_head_kv;
  d["head_dim"] = c.head_dim;
  d["n_ff"] = c.n_ff;
  d["n_vocab"] = c.n_vocab;
  d["rope_dim"] = c.rope_dim;
  d["n_ctx_train"] = c.n_ctx_train;
  d["rope_base"] = c.rope_base;
  d["rms_eps"] = c.rms_eps;
  d["tied_output"] = c.tied_output;
  d["description"] = c.describe();
  return d;
}

SamplingOptions sampling(float temperature, int top_k, float top_p, float min_p, uint64_t seed) {
  SamplingOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  o.seed = seed;
  validateSamplingOptions(o);
  return o;
}

}  // namespace

void bindEngine(nb::module_& m) {
  m.attr("DEFAULT_SAMPLING_SEED") = kDefaultSamplingSeed;
  m.def("default_model_path", &defaultModelPath,
        "The model flashring uses when none is named: $FLASHRING_MODEL, else SmolLM2-135M-Instruct.Q4_1.gguf in "
        "$FLASHRING_MODEL_DIR, $XDG_CACHE_HOME/flashring/models or ~/.cache/flashring/models.");

  nb::class_<Session>(m, "LlamaSession", "A model on tp x sp ranks (use flashring.Llama).")
      .def(
          "__init__",
          [](Session* self, const std::string& model, int tp, int sp, const std::string& comm, int group_size,
             int spikes, int error_feedback, bool rotate, bool clip, int refine_layers, const std::string& oneshot,
             const std::string& attn, const std::string& append_attn, const std::string& layout,
             const std::string& weights, int threads, int64_t ctx, double timeout_s, int64_t gemm_threshold,
             Comm* handle) {
            SessionOptions o;
            o.model = model;
            o.tp = tp;
            o.sp = sp;
            o.comm.comm = comm;
            o.comm.group_size = group_size;
            o.comm.spikes = spikes;
            o.comm.error_feedback = error_feedback;
            o.comm.rotate = rotate;
            o.comm.clip = clip;
            o.comm.refine_layers = refine_layers;
            o.comm.oneshot = oneshot;
            o.attention = spSchemeFromName(attn);
            if (append_attn != "auto" && append_attn != "pass-q" && append_attn != "pass-kv")
              throw InvalidArgument(fmt::format("append_attn '{}': use auto, pass-q or pass-kv", append_attn));
            o.append_attention = append_attn == "pass-q"    ? SpScheme::TokenRing
                                 : append_attn == "pass-kv" ? SpScheme::AllGatherKV
                                                            : SpScheme::Auto;
            if (layout != "zigzag" && layout != "contiguous")
              throw InvalidArgument(fmt::format("layout '{}': use zigzag or contiguous", layout));
            o.layout = layout == "contiguous" ? SeqLayout::Contiguous : SeqLayout::Zigzag;
            if (weights != "quant" && weights != "f32")
              throw InvalidArgument(fmt::format("weights '{}': use quant or f32", weights));
            o.load.dequantize = weights == "f32";
            o.threads = threads;
            o.ctx = ctx;
            if (timeout_s < 0 || !std::isfinite(timeout_s))
              throw InvalidArgument("timeout: expected a positive number of seconds");
            o.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(timeout_s * 1000.0)));
            o.gemm_threshold = gemm_threshold;
            std::shared_ptr<void> keep;
            Communicator* c = nullptr;
            if (handle != nullptr) {
              c = &handle->get();
              keep = handle->owner;
            }
            std::unique_ptr<LlamaSession> s;
            {
              nb::gil_scoped_release release;
              s = c != nullptr ? std::make_unique<LlamaSession>(*c, o) : std::make_unique<LlamaSession>(o);
            }
            new (self) Session{std::move(keep), std::move(s)};
          },
          nb::arg("model"), nb::arg("tp"), nb::arg("sp"), nb::arg("comm"), nb::arg("group_size"), nb::arg("spikes"),
          nb::arg("error_feedback"), nb::arg("rotate"), nb::arg("clip"), nb::arg("refine_layers"), nb::arg("oneshot"),
          nb::arg("attn"), nb::arg("append_attn"), nb::arg("layout"), nb::arg("weights"), nb::arg("threads"),
          nb::arg("ctx"), nb::arg("timeout"), nb::arg("gemm_threshold"), nb::arg("handle").none())
      .def_prop_ro("model_path", [](const Session& s) { return s.get().modelPath(); })
      .def_prop_ro("config", [](const Session& s) { return configDict(s.get().config()); })
      .def_prop_ro("ctx", [](const Session& s) { return s.get().contextLimit(); })
      .def_prop_ro("rank", [](const Session& s) { return s.get().rank(); })
      .def_prop_ro("ranks", [](const Session& s) { return s.get().ranks(); })
      .def_prop_ro("transport", [](const Session& s) { return s.get().transport(); })
      .def_prop_ro("comm_setting",
                   [](const Session& s) {
                     // The communication as the engines run it (presets expanded, the error-feedback default).
                     CommSetting c = s.get().options().comm;
                     c.applyPreset();
                     nb::dict d;
                     d["comm"] = c.comm;
                     d["group_size"] = c.group_size;
                     d["spikes"] = c.spikes;
                     d["error_feedback"] = c.errorFeedback();
                     d["rotate"] = c.rotate;
                     d["clip"] = c.clip;
                     d["refine_layers"] = c.refine_layers;
                     d["oneshot"] = c.oneshot;
                     return d;
                   })
      .def_prop_ro("closed", [](const Session& s) { return !s.s || s.s->closed(); })
      .def_prop_ro("failure", [](const Session& s) { return s.s ? s.s->failure() : std::string(); })
      .def_prop_ro("generating", [](const Session& s) { return s.get().generating(); })
      .def(
          "tokenize",
          [](const Session& s, const std::string& text, bool add_bos, bool special) {
            const LlamaSession& ls = s.get();
            nb::gil_scoped_release release;
            return ls.tokenize(text, add_bos, special);
          },
          nb::arg("text"), nb::arg("add_bos"), nb::arg("special"))
      .def(
          "detokenize",
          [](const Session& s, const std::vector<TokenId>& ids) {
            const LlamaSession& ls = s.get();
            std::string out;
            {
              nb::gil_scoped_release release;
              out = ls.detokenize(ids);
            }
            return toBytes(out);
          },
          nb::arg("ids"))
      .def(
          "token_bytes", [](const Session& s, TokenId id) { return toBytes(s.get().tokenText(id)); }, nb::arg("id"))
      .def(
          "chat_tokens",
          [](const Session& s, const std::vector<std::pair<std::string, std::string>>& messages,
             const std::string& tmpl) {
            const LlamaSession& ls = s.get();
            std::vector<ChatMessage> conv;
            for (const auto& [role, content] : messages) conv.push_back({role, content});
            std::vector<TokenId> stops, ids;
            {
              nb::gil_scoped_release release;
              ids = ls.chatTokens(conv, tmpl, &stops);
            }
            return std::make_pair(ids, stops);
          },
          nb::arg("messages"), nb::arg("template"))
      .def(
          "begin",
          [](Session& s, const std::vector<TokenId>& prompt, int n_predict, float temperature, int top_k, float top_p,
             float min_p, uint64_t seed, const std::vector<TokenId>& stop_tokens, bool stop_at_eog) {
            LlamaSession& ls = s.get();
            GenerationRequest req;
            req.n_predict = n_predict;
            req.sampling = sampling(temperature, top_k, top_p, min_p, seed);
            req.stop_tokens = stop_tokens;
            req.stop_at_eog = stop_at_eog;
            nb::gil_scoped_release release;
            return ls.beginGeneration(prompt, req);
          },
          nb::arg("prompt"), nb::arg("n_predict"), nb::arg("temperature"), nb::arg("top_k"), nb::arg("top_p"),
          nb::arg("min_p"), nb::arg("seed"), nb::arg("stop_tokens"), nb::arg("stop_at_eog"))
      .def("next",
           [](Session& s) {
             LlamaSession& ls = s.get();
             nb::gil_scoped_release release;
             return ls.nextToken();
           })
      .def(
          "end",
          [](Session& s, const std::string& reason) {
            LlamaSession& ls = s.get();
            GenerateResult r;
            {
              nb::gil_scoped_release release;
              r = ls.endGeneration(reason);
            }
            return resultDict(r);
          },
          nb::arg("reason"))
      .def(
          "perplexity",
          [](Session& s, const std::string& text, int n_ctx, int64_t chunks, bool kl) {
            LlamaSession& ls = s.get();
            PerplexityOptions po;
            po.n_ctx = n_ctx;
            po.max_windows = chunks;
            po.kl_divergence = kl;
            PerplexityResult r;
            {
              nb::gil_scoped_release release;
              r = ls.perplexity(std::string_view(text), po);
            }
            return pplDict(r);
          },
          nb::arg("text"), nb::arg("ctx"), nb::arg("chunks"), nb::arg("kl_divergence"))
      .def("close", [](Session& s) {
        if (!s.s) return;
        {
          nb::gil_scoped_release release;
          s.s->close();
        }
        s.keep.reset();
      });
}

}  // namespace flashring::py
