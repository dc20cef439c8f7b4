// `flashring run`: generation with a GGUF model under tensor x sequence parallelism: a raw prompt, one chat
// turn (--chat) or a conversation read from stdin that keeps the KV cache across turns (--interactive).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli.h"
#include "flashring/chat.h"
#include "flashring/generate.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/tokenizer.h"
#include "model_options.h"

namespace flashring::cli {

namespace {

using Turn = GenerateResult;

// Collective: generate() of the library; rank 0 writes the tokens to stdout as they come when `stream`.
Turn generateTurn(Communicator& comm, LlamaEngine& eng, const Tokenizer& tok, std::span<const TokenId> tokens,
                  bool fresh, const GenerateOptions& options, bool stream) {
  const bool printer = comm.rank() == 0 && stream;
  return generate(comm, eng, tok, tokens, fresh, options, [&](TokenId id) {
    if (!printer) return;
    const std::string piece = tok.tokenText(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
}

int64_t contextLimit(int64_t ctx_flag, const LlamaConfig& cfg) { return ctx_flag > 0 ? ctx_flag : cfg.n_ctx_train; }

std::string contextName(int64_t ctx_flag, const LlamaConfig& cfg) {
  return ctx_flag > 0
             ? fmt::format("--ctx-size {}", ctx_flag)
             : fmt::format("the model's training context, {} tokens; raise it with --ctx-size", cfg.n_ctx_train);
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * s.size());
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string unhex(const std::string& h, const std::string& what) {
  auto val = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw InvalidArgument(fmt::format("{}: '{}' is not a hex digit", what, c));
  };
  if (h.size() % 2) throw InvalidArgument(fmt::format("{}: odd number of hex digits", what));
  std::string out;
  for (size_t i = 0; i < h.size(); i += 2) out.push_back(static_cast<char>(val(h[i]) * 16 + val(h[i + 1])));
  return out;
}

// --messages FILE: [{"role": "user", "content": "..."}, ...]; "content_hex" instead of "content" gives the
// bytes in hex (for text that is not UTF-8, as the replies of --json carry it in "reply_hex").
std::vector<ChatMessage> readMessages(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(readFile(path));
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(fmt::format("--messages {}: not JSON ({})", path, e.what()));
  }
  if (!j.is_array()) throw InvalidArgument(fmt::format("--messages {}: expected a JSON array of messages", path));
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& m = j[i];
    const std::string what = fmt::format("--messages {}: message {}", path, i);
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw InvalidArgument(what + ": expected {\"role\": ..., \"content\": ...}");
    ChatMessage msg{m["role"].get<std::string>(), ""};
    if (m.contains("content_hex") && m["content_hex"].is_string())
      msg.content = unhex(m["content_hex"].get<std::string>(), what);
    else if (m.contains("content") && m["content"].is_string())
      msg.content = m["content"].get<std::string>();
    else
      throw InvalidArgument(what + ": no string \"content\" (or \"content_hex\")");
    out.push_back(std::move(msg));
  }
  return out;
}

// Rank 0's line to every rank. A fixed header (length, present) goes first, then the bytes. The other ranks
// wait for the header without a deadline, since a person types it, polling test() so that an abort (a rank
// that failed) still ends them; the bytes follow at once and are waited for with the communicator's deadline.
// std::nullopt (end of input) ends every rank's loop alike.
constexpr Tag kLineHeaderTag = 101, kLineTextTag = 102;  // user tags: flashring's collectives use 1024 and up

std::optional<std::string> broadcastLine(Communicator& comm, const std::function<std::optional<std::string>()>& read) {
  struct Header {
    uint64_t bytes = 0;
    uint64_t present = 0;
  } h;
  std::string text;
  if (comm.rank() == 0) {
    std::optional<std::string> line = read();
    h.present = line.has_value() ? 1 : 0;
    if (line) text = std::move(*line);
    h.bytes = text.size();
    std::vector<Request> reqs;
    for (int p = 1; p < comm.size(); ++p) {
      reqs.push_back(comm.isend(&h, sizeof(h), p, kLineHeaderTag));
      if (h.bytes > 0) reqs.push_back(comm.isend(text.data(), text.size(), p, kLineTextTag));
    }
    comm.waitAll(reqs, comm.deadline());
  } else {
    Request r = comm.irecv(&h, sizeof(h), 0, kLineHeaderTag);
    while (!comm.test(r)) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (h.bytes > 0) {
      text.resize(h.bytes);
      Request t = comm.irecv(text.data(), text.size(), 0, kLineTextTag);
      comm.wait(t, comm.deadline());
    }
  }
  if (!h.present) return std::nullopt;
  return text;
}

// One user turn from stdin (rank 0): a line; a line ending in a backslash continues on the next one (the
// backslash becomes a newline). Empty lines are skipped; "/exit" or the end of input ends the conversation.
std::optional<std::string> readTurn(bool tty) {
  std::string text, line;
  if (tty) std::fputs("> ", stderr);
  std::fflush(stderr);
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (text.empty() && line == "/exit") return std::nullopt;
    if (!line.empty() && line.back() == '\\') {
      line.pop_back();
      text += line;
      text += '\n';
      if (tty) std::fputs(". ", stderr);
      continue;
    }
    text += line;
    if (text.empty()) {
      if (tty) std::fputs("> ", stderr);
      continue;
    }
    return text;
  }
  if (text.empty()) return std::nullopt;
  return text;
}

struct ChatOptions {
  bool interactive = false;
  std::string chat_template;  // a builtin name or a template file; empty: the model's
  std::string system;
  std::string messages_file;
  bool prompt_given = false;
  std::string prompt;
  int n_predict = 32;
  int64_t ctx = 0;
  bool verbose_prompt = false;
};

// The template the chat runs: a file when `name` names one that exists and is not a builtin, else the
// builtin, else the model's own.
ChatTemplate chatTemplateFor(const gguf::File& file, const std::string& name) {
  if (!name.empty()) {
    const auto& names = ChatTemplate::builtinNames();
    const bool builtin = std::find(names.begin(), names.end(), name) != names.end();
    if (!builtin && std::filesystem::is_regular_file(name)) {
      try {
        return ChatTemplate(readFile(name));
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(fmt::format("--chat-template {}: {}", name, e.what()));
      }
    }
    try {
      return ChatTemplate::builtin(name);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(
          fmt::format("--chat-template {}: {} (or the path of a Jinja template file)", name, e.what()));
    }
  }
  return ChatTemplate::forModel(file);
}

// The per-turn figures of --json.
nlohmann::json turnJson(const std::string& user, const std::string& reply, const Turn& t, int64_t conversation_tokens) {
  return {{"user", user},
          {"reply", reply},
          {"reply_hex", hex(reply)},
          {"reply_tokens", t.reply},
          {"conversation_tokens", conversation_tokens},
          {"appended_tokens", t.run_tokens},
          {"cache_before", t.cache_before},
          {"cache_after", t.cache_after},
          {"fresh_prefill", t.fresh},
          {"generated_tokens", t.reply.size()},
          {"stop", t.stop},
          {"ttft_ms", t.ttft_s * 1e3},
          {"decode_tok_s", t.decodeTokS()}};
}

void printSummary(const ModelOptions& mo, const std::string& model, int64_t prompt_tokens, int64_t generated,
                  double ttft_s, double decode_tps, const Turn& t) {
  const double prefill_tps = ttft_s > 0 ? static_cast<double>(prompt_tokens) / ttft_s : 0;
  fmt::print(
      "\nmodel: {}\nplan: tp {} x sp {} on {} ranks ({}), comm {} ({}), attention {}{}\n"
      "prompt {} tokens, generated {}\n"
      "TTFT {:.1f} ms  prefill {:.1f} tok/s  decode {:.2f} tok/s\n"
      "prefill breakdown (mean over ranks): compute {:.1f} ms (attention {:.1f}), quantization {:.1f} ms, "
      "communication {:.1f} ms; wire {:.2f} MB (all ranks; {:.2f} MB with decode)\n",
      model, mo.tp, mo.sp, mo.ranks(), mo.transport.transport, mo.comm, mo.codecDescription(), mo.attn,
      mo.sp > 1 ? fmt::format(" -> {}", spSchemeName(t.scheme)) : std::string(), prompt_tokens, generated, ttft_s * 1e3,
      prefill_tps, decode_tps, t.compute_s * 1e3, t.attn_s * 1e3, t.quant_s * 1e3, t.comm_s * 1e3,
      t.prefill_wire_bytes / 1e6, t.wire_bytes / 1e6);
}

nlohmann::json runJson(const ModelOptions& mo, int64_t prompt_tokens, int64_t generated, double ttft_s,
                       double decode_tps, const Turn& t, const std::string& text) {
  nlohmann::json j = commonJson(mo);
  j.update({{"ttft_ms", ttft_s * 1e3},
            {"prefill_tok_s", ttft_s > 0 ? static_cast<double>(prompt_tokens) / ttft_s : 0},
            {"decode_tok_s", decode_tps},
            {"comm_ms", t.comm_s * 1e3},
            {"quant_ms", t.quant_s * 1e3},
            {"compute_ms", t.compute_s * 1e3},
            {"attn_ms", t.attn_s * 1e3},
            {"wire_bytes", t.prefill_wire_bytes},
            {"wire_bytes_with_decode", t.wire_bytes},
            {"prompt_tokens", prompt_tokens},
            {"generated_tokens", generated},
            {"attn_scheme", spSchemeName(t.scheme)},
            {"text", text}});
  return j;
}

// --chat and --interactive, on every rank.
void chatOnRank(ModelRank& mr, const ModelOptions& mo, const ChatOptions& co, const ChatTemplate& tmpl) {
  Communicator& comm = mr.comm;
  LlamaEngine& eng = mr.engine;
  const Tokenizer& tok = mr.tok;
  const bool root = comm.rank() == 0;
  const ChatSpecialTokens specials = chatSpecialTokensFromGguf(mr.file);
  ChatRenderOptions ro;
  ro.add_generation_prompt = true;
  ro.bos_token = specials.bos;
  ro.eos_token = specials.eos;
  // End of generation: the vocabulary's (eos, <|im_end|>, <|eot_id|>, ...) and the template's end-of-turn
  // marker where it is one token of this vocabulary (a forced template on a model of another family).
  GenerateOptions gen;
  gen.stop_tokens = chatStopTokens(tmpl, tok);
  gen.n_predict = co.n_predict;
  const int64_t ctx = contextLimit(co.ctx, eng.config());
  gen.ctx = ctx;

  std::vector<ChatMessage> conv;
  if (!co.system.empty()) conv.push_back({"system", co.system});
  if (!co.messages_file.empty()) {
    const std::vector<ChatMessage> m = readMessages(co.messages_file);
    conv.insert(conv.end(), m.begin(), m.end());
  }
  std::vector<TokenId> cached;  // the tokens in the KV cache, in order
  nlohmann::json turns = nlohmann::json::array();
  const std::string family = tmpl.family().empty() ? std::string("custom") : std::string(tmpl.family());
  const std::string template_name =
      co.chat_template.empty() ? fmt::format("the model's ({})", family) : co.chat_template;
  if (root && co.interactive)
    fmt::print(stderr,
               "flashring chat: {} on tp {} x sp {} ({}), template {}, context {} tokens. One message per line (end "
               "a line with \\ to continue it on the next); /exit or end of input quits.\n",
               eng.config().describe(), mo.tp, mo.sp, mo.transport.transport, template_name, ctx);

  auto writeChatJson = [&] {
    if (!root || mo.json.empty()) return;
    nlohmann::json j = commonJson(mo);
    j.update({{"chat_template", family}, {"context", ctx}, {"turns", turns}});
    writeJson(mo.json, j);
  };
  auto turn = [&](const std::string& user) {
    conv.push_back({"user", user});
    const std::string text = tmpl.render(conv, ro);
    // The template carries its own BOS; special tokens in the text are the template's markers.
    const std::vector<TokenId> ids = tok.encode(text, /*add_bos=*/false, /*parse_special=*/true);
    if (ids.empty()) throw InvalidArgument("the rendered conversation encodes to no tokens");
    if (root && co.verbose_prompt) {
      fmt::print(stderr, "--- rendered conversation ({} tokens) ---\n{}\n---\n", ids.size(), text);
      std::fflush(stderr);
    }
    if (ctx > 0 && static_cast<int64_t>(ids.size()) > ctx)
      throw InvalidArgument(fmt::format("the conversation is {} tokens, beyond the context limit ({})", ids.size(),
                                        contextName(co.ctx, eng.config())));
    // Only what the conversation adds to the cached tokens is run, when the cache is a prefix of it.
    const bool prefix =
        !cached.empty() && cached.size() < ids.size() && std::equal(cached.begin(), cached.end(), ids.begin());
    if (!cached.empty() && !prefix && root)
      fmt::print(stderr,
                 "flashring: the cached {} tokens are not a prefix of the new rendering of the conversation ({} "
                 "tokens: the template renders earlier turns differently, or a reply re-tokenizes differently); "
                 "prefilling the whole conversation again\n",
                 cached.size(), ids.size());
    const std::span<const TokenId> run =
        prefix ? std::span<const TokenId>(ids).subspan(cached.size()) : std::span<const TokenId>(ids);
    const Turn t = generateTurn(comm, eng, tok, run, !prefix, gen, /*stream=*/true);
    // The cache now holds the conversation and the reply tokens fed back by decode (all but the last when
    // n_predict or the context cut the reply).
    cached = ids;
    const size_t fed = static_cast<size_t>(t.cache_after) - ids.size();
    cached.insert(cached.end(), t.reply.begin(), t.reply.begin() + static_cast<std::ptrdiff_t>(fed));
    const std::string reply = tok.decode(t.reply);
    conv.push_back({"assistant", reply});
    if (!root) return;
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (t.stop == "context")
      fmt::print(stderr, "flashring: the reply was cut at the context limit ({})\n", contextName(co.ctx, eng.config()));
    turns.push_back(turnJson(user, reply, t, static_cast<int64_t>(ids.size())));
    if (co.interactive) {
      fmt::print(stderr,
                 "[turn {}: {} {} prompt tokens (conversation {}, cache {} -> {}), TTFT {:.1f} ms, {} tokens, "
                 "decode {:.2f} tok/s]\n",
                 turns.size(), prefix ? "appended" : "prefilled", t.run_tokens, ids.size(), t.cache_before,
                 t.cache_after, t.ttft_s * 1e3, t.reply.size(), t.decodeTokS());
      std::fflush(stderr);
      writeChatJson();  // after every turn: a session cut short keeps what it did
    } else {
      const std::string model = eng.config().describe();
      printSummary(mo, model, t.run_tokens, static_cast<int64_t>(t.reply.size()), t.ttft_s, t.decodeTokS(), t);
      if (!mo.json.empty()) {
        nlohmann::json j =
            runJson(mo, t.run_tokens, static_cast<int64_t>(t.reply.size()), t.ttft_s, t.decodeTokS(), t, reply);
        j.update({{"chat_template", family}, {"context", ctx}, {"turns", turns}});
        writeJson(mo.json, j);
      }
    }
  };

  if (!co.interactive) {
    turn(co.prompt);
    return;
  }
  if (co.prompt_given) turn(co.prompt);
  const bool tty = isatty(STDIN_FILENO) != 0;
  while (true) {
    const std::optional<std::string> line = broadcastLine(comm, [&] { return readTurn(tty); });
    if (!line) break;
    turn(*line);
  }
  if (root && tty) std::fputs("\n", stderr);
  writeChatJson();
}

}  // namespace

RunResult runGenerate(const ModelOptions& mo, const std::string& prompt, int n_predict, bool stream, int64_t ctx_size) {
  RunResult res;
  std::mutex mu;
  runModel(mo, [&](Communicator& comm, LlamaEngine& eng, const Tokenizer& tok) {
    const std::vector<TokenId> ids = tok.encode(prompt, true, true);
    if (ids.empty()) throw InvalidArgument("the prompt encodes to no tokens");
    const int64_t ctx = contextLimit(ctx_size, eng.config());
    if (ctx > 0 && static_cast<int64_t>(ids.size()) > ctx)
      throw InvalidArgument(fmt::format("the prompt is {} tokens, beyond the context limit ({})", ids.size(),
                                        contextName(ctx_size, eng.config())));
    GenerateOptions gen;
    gen.n_predict = n_predict;
    gen.ctx = ctx;
    const Turn t = generateTurn(comm, eng, tok, ids, true, gen, stream);
    if (comm.rank() == 0 && stream) std::fputs("\n", stdout);
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) {
      res.root = true;
      res.text = tok.decode(t.reply);
      res.prompt_tokens = static_cast<int64_t>(ids.size());
      res.generated = static_cast<int64_t>(t.reply.size());
      res.ttft_s = t.ttft_s;
      res.decode_s = t.decode_s;
      res.comm_s = t.comm_s;
      res.quant_s = t.quant_s;
      res.attn_s = t.attn_s;
      res.compute_s = t.compute_s;
      res.prefill_wire_bytes = t.prefill_wire_bytes;
      res.wire_bytes = t.wire_bytes;
      res.scheme = t.scheme;
      res.model = eng.config().describe();
    }
  });
  return res;
}

void addRun(CLI::App& app) {
  auto mo = std::make_shared<ModelOptions>();
  auto prompt = std::make_shared<std::string>("The capital of France is");
  auto prompt_file = std::make_shared<std::string>();
  auto n_predict = std::make_shared<int>(32);
  auto chat = std::make_shared<bool>(false);
  auto co = std::make_shared<ChatOptions>();
  auto* cmd = app.add_subcommand(
      "run",
      "generate text with a GGUF model under tensor x sequence parallelism: a raw prompt, a chat turn (--chat) or "
      "a conversation on stdin that keeps the KV cache across turns (--interactive)");
  cmd->footer(
      "Examples:\n"
      "  flashring run -p \"The capital of France is\" -n 32\n"
      "  flashring run --chat -p \"What is the capital of France?\" --system \"Answer briefly.\"\n"
      "  flashring run --interactive --tp 2 --sp 2 --temp 0.7 --top-p 0.9 --seed 1\n"
      "  mpirun -n 4 flashring run --interactive --transport mpi --tp 2 --sp 2\n"
      "--interactive reads one user message per line from stdin (a line ending in \\ continues on the next "
      "line); /exit or end of input quits. Each turn appends only the new tokens of the rendered conversation "
      "to the KV cache, and reports them with the TTFT and decode rate on stderr.");
  mo->add(*cmd);
  cmd->add_option("-p,--prompt", *prompt, "prompt text (--chat: the user message; --interactive: the first one)")
      ->capture_default_str();
  cmd->add_option("-f,--file", *prompt_file, "read the prompt from this file instead");
  cmd->add_option("-n,--n-predict", *n_predict,
                  "tokens to generate (per turn with --interactive; stops early at end of generation)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size", co->ctx,
                  "context limit in tokens: the prompt (with --chat the whole conversation) and what is generated "
                  "after it (0: the model's training context); generation stops there, a longer prompt is an error")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->capture_default_str();
  cmd->add_flag("--chat", *chat,
                "the prompt is a user message, rendered with the model's chat template (tokenizer.chat_template); "
                "generation stops at the end-of-turn token, the reply is streamed");
  cmd->add_flag("-i,--interactive", co->interactive,
                "chat (implies --chat) with user turns read from stdin, one per line, keeping the KV cache across "
                "turns");
  cmd->add_option("--chat-template", co->chat_template,
                  fmt::format("use this template instead of the model's: a builtin ({}) or a Jinja template file", [] {
                    std::string s;
                    for (std::string_view n : ChatTemplate::builtinNames())
                      s += (s.empty() ? "" : ", ") + std::string(n);
                    return s;
                  }()));
  cmd->add_option("--system", co->system, "with --chat: a system message before the conversation");
  cmd->add_flag("--verbose-prompt", co->verbose_prompt,
                "with --chat: print each rendered conversation (the text the template makes) to stderr");
  cmd->add_option("--messages", co->messages_file,
                  "with --chat: a JSON file of earlier messages, [{\"role\": \"user\", \"content\": \"...\"}, "
                  "{\"role\": \"assistant\", ...}, ...] (\"content_hex\": the bytes in hex), continued by -p");
  cmd->callback([=] {
    mo->resolve();
    const bool given = cmd->count("--prompt") > 0 || !prompt_file->empty();
    const std::string text = prompt_file->empty() ? *prompt : readFile(*prompt_file);
    const bool chat_mode = *chat || co->interactive;
    if (!chat_mode) {
      for (const char* flag : {"--chat-template", "--system", "--messages"})
        if (cmd->count(flag) > 0) throw InvalidArgument(fmt::format("{} needs --chat or --interactive", flag));
    }
    if (chat_mode) {
      ChatOptions c = *co;
      c.prompt = text;
      c.prompt_given = given;
      c.n_predict = *n_predict;
      // The template is resolved before the model loads, so that a bad name or a model without one fails
      // at once, with the same message on every rank.
      std::optional<ChatTemplate> tmpl;
      if (std::filesystem::exists(mo->modelPath())) {
        const gguf::File file = gguf::File::open(mo->modelPath());
        tmpl = chatTemplateFor(file, c.chat_template);
      }
      runModel(*mo,
               [&](ModelRank& r) { chatOnRank(r, *mo, c, tmpl ? *tmpl : chatTemplateFor(r.file, c.chat_template)); });
      return;
    }
    const RunResult r = runGenerate(*mo, text, *n_predict, true, co->ctx);
    if (!r.root) return;
    const double decode_tps = r.decode_s > 0 && r.generated > 1 ? static_cast<double>(r.generated - 1) / r.decode_s : 0;
    Turn t;
    t.comm_s = r.comm_s;
    t.quant_s = r.quant_s;
    t.attn_s = r.attn_s;
    t.compute_s = r.compute_s;
    t.prefill_wire_bytes = r.prefill_wire_bytes;
    t.wire_bytes = r.wire_bytes;
    t.scheme = r.scheme;
    printSummary(*mo, r.model, r.prompt_tokens, r.generated, r.ttft_s, decode_tps, t);
    if (!mo->json.empty())
      writeJson(mo->json, runJson(*mo, r.prompt_tokens, r.generated, r.ttft_s, decode_tps, t, r.text));
  });
}

}  // namespace flashring::cli
