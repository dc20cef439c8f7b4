// Step-wise generation on a LlamaEngine (flashring/generate.h).
#include "flashring/generate.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "flashring/chat.h"
#include "flashring/error.h"

namespace flashring {

namespace {

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

Generation::Generation(Communicator& world, LlamaEngine& engine, const Tokenizer& tok, GenerateOptions options)
    : world_(world), engine_(engine), tok_(tok), options_(std::move(options)) {}

bool Generation::stops(TokenId id) const {
  return (options_.stop_at_eog && tok_.isEog(id)) ||
         std::find(options_.stop_tokens.begin(), options_.stop_tokens.end(), id) != options_.stop_tokens.end();
}

std::optional<TokenId> Generation::start(std::span<const TokenId> tokens, bool fresh) {
  if (started_) throw InvalidArgument("Generation::start: called twice (one Generation runs one prompt)");
  started_ = true;
  result_.fresh = fresh;
  result_.cache_before = fresh ? 0 : engine_.position();
  result_.run_tokens = static_cast<int64_t>(tokens.size());
  result_.stop = "n_predict";
  barrier(world_);
  engine_.resetStats();
  const auto t0 = Clock::now();
  const TokenId first = fresh ? engine_.prefill(tokens) : engine_.append(tokens);
  ttft_local_ = secondsSince(t0);
  prefill_stats_ = engine_.stats();
  if (options_.n_predict <= 0) {
    done_ = true;
    return std::nullopt;
  }
  if (stops(first)) {
    result_.stop = "eog";
    done_ = true;
    return std::nullopt;
  }
  result_.reply.push_back(first);
  last_ = first;
  return first;
}

std::optional<TokenId> Generation::next() {
  if (!started_) throw InvalidArgument("Generation::next: start() first");
  if (done_) return std::nullopt;
  if (static_cast<int64_t>(result_.reply.size()) >= options_.n_predict) {
    result_.stop = "n_predict";
    done_ = true;
    return std::nullopt;
  }
  if (options_.ctx > 0 && engine_.position() >= options_.ctx) {
    result_.stop = "context";
    done_ = true;
    return std::nullopt;
  }
  const auto t0 = Clock::now();
  const TokenId id = engine_.decode(last_);
  decode_local_ += secondsSince(t0);
  if (stops(id)) {
    result_.stop = "eog";
    done_ = true;
    return std::nullopt;
  }
  result_.reply.push_back(id);
  last_ = id;
  return id;
}

GenerateResult Generation::finish(const std::string& reason) {
  if (!started_) throw InvalidArgument("Generation::finish: start() first");
  if (finished_) throw InvalidArgument("Generation::finish: called twice");
  finished_ = true;
  if (!done_) {
    result_.stop = reason;
    done_ = true;
  }
  GenerateResult& t = result_;
  t.cache_after = engine_.position();
  const EngineStats all = engine_.stats();
  // TTFT is the slowest rank's; the breakdown is the mean over ranks of the prefill phase.
  const double n = world_.size();
  t.ttft_s = allreduceMax(world_, ttft_local_);
  t.decode_s = allreduceMax(world_, decode_local_);
  t.comm_s = allreduceSumDouble(world_, prefill_stats_.comm_s) / n;
  t.quant_s = allreduceSumDouble(world_, prefill_stats_.quant_s) / n;
  t.attn_s = allreduceSumDouble(world_, prefill_stats_.attn_s) / n;
  t.compute_s = allreduceSumDouble(world_, prefill_stats_.computeSeconds()) / n;
  t.prefill_wire_bytes = allreduceSumDouble(world_, static_cast<double>(prefill_stats_.wire_bytes));
  t.wire_bytes = allreduceSumDouble(world_, static_cast<double>(all.wire_bytes));
  t.scheme = prefill_stats_.last_scheme;
  return std::move(result_);
}

GenerateResult generate(Communicator& world, LlamaEngine& engine, const Tokenizer& tok, std::span<const TokenId> tokens,
                        bool fresh, const GenerateOptions& options, const std::function<void(TokenId)>& on_token) {
  Generation g(world, engine, tok, options);
  std::optional<TokenId> id = g.start(tokens, fresh);
  while (id) {
    if (on_token) on_token(*id);
    id = g.next();
  }
  return g.finish();
}

std::vector<TokenId> chatStopTokens(const ChatTemplate& tmpl, const Tokenizer& tok) {
  std::vector<TokenId> stops;
  for (const char* marker : {"<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"}) {
    if (tmpl.source().find(marker) == std::string::npos) continue;
    const std::vector<TokenId> ids = tok.encode(marker, false, true);
    if (ids.size() == 1) stops.push_back(ids[0]);
  }
  return stops;
}

}  // namespace flashring
