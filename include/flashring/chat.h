// Chat templates: a conversation formatted the way Hugging Face's `apply_chat_template` formats it.
//
// A chat model's GGUF carries its prompt format as a Jinja template (`tokenizer.chat_template`, the
// tokenizer_config.json string). flashring runs that string itself with a small Jinja interpreter that
// mirrors the environment transformers uses (jinja2's ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks on, keep_trailing_newline off, the loopcontrols extension, HF's own `tojson`, and the
// globals raise_exception and strftime_now), so that the text it renders is byte for byte the text HF
// renders; tests/tools/chat_reference.py checks that against jinja2 itself.
//
// Supported Jinja (the subset the chat templates of the LLaMA, Qwen, SmolLM, Mistral, DeepSeek, Phi and
// similar families use; anything else is refused when the template is parsed, naming the line and what is
// not supported):
//   tags        {{ }}, {% %}, {# #}, whitespace control (-, +), if/elif/else, for (several targets,
//               `if` filter, else, loop.index/index0/revindex/revindex0/first/last/length/previtem/
//               nextitem/depth/cycle), break, continue, set (name, name.attr on a namespace, a, b = ...,
//               block form), macro (positional and keyword arguments with defaults), generation (HF's
//               extension: renders its body)
//   expressions literals (strings with Python escapes, ints, floats, true/false/none in either case,
//               lists, tuples, dicts), a.b, a[b], a[i:j:k], calls with keyword arguments, + - * / // % **,
//               ~, comparisons (chained), in / not in, and / or / not, x if c else y, filters, tests
//   filters     abs capitalize count default(d) first float int items join last length list lower map
//               reject rejectattr replace reverse safe select selectattr string title tojson trim unique
//               upper
//   tests       defined undefined none boolean true false integer float number string mapping iterable
//               sequence callable sameas equalto eq == ne != lt lessthan < le <= gt greaterthan > ge >=
//               in odd even divisibleby lower upper
//   methods     str: strip lstrip rstrip split startswith endswith upper lower title capitalize replace
//               find count join; dict: items keys values get
//   globals     messages, add_generation_prompt, bos_token, eos_token, tools (none), documents (none),
//               the caller's extra variables, raise_exception, namespace, range, dict, strftime_now
// Scoping is jinja2's: a for loop's body is a new scope on every iteration (a `set` there is gone after the
// iteration), `if` is not a scope, a namespace() carries values out of loops, a macro sees the template's
// top-level variables and its arguments.
// Not supported: extends/include/import/block/call/filter/with/raw/do tags, recursive loops, *args and
// **kwargs, `%` string formatting, str.format, dict keys other than strings. Integers are 64-bit (Python's
// are unbounded: an overflow is an error here). Case mapping (upper, lower, title, capitalize) maps ASCII
// letters only, and Python's repr of a string (what printing a list of strings shows) escapes ASCII and C1
// controls, Unicode spaces and the zero-width/BOM format characters but prints other non-printable code
// points as they are; everything else follows Python for any Unicode text.
// A GGUF's template is untrusted input: nesting (200 levels of tags or brackets, expression trees 500 high,
// values 500 deep), work (2,000,000 statements and loop iterations) and size (64 MiB for a string or the
// rendering) are bounded, and exceeding a bound is an InvalidArgument, never a crash or a hang.
//
// Messages carry a role and text content. Roles are not checked here: the template decides, as under HF
// (ChatML and Llama 3 print any role as given; Llama 2 refuses a conversation that does not alternate
// user/assistant after an optional system message, and drops other roles silently; Mistral refuses roles
// other than user/assistant; Llama 3.1 and Qwen2.5 render role "tool" as a tool result). A template that
// calls raise_exception(msg) fails with InvalidArgument "chat template refused the conversation: msg".
// Tool calling is out of reach of this API: tools is none, messages have no tool_calls, and extra variables
// are strings, so the templates' tool branches (Llama 3.1's custom_tools/builtin_tools, Qwen2.5's <tools>)
// are never taken; without tools they render exactly as HF does.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashring/error.h"

namespace flashring {

namespace gguf {
class File;
}

struct ChatMessage {
  std::string role, content;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // end with the header of the assistant turn that is to be generated
  std::string bos_token, eos_token;   // the texts of the model's BOS and EOS tokens ("<s>", "<|im_end|>")
  // Extra string variables for the template, as HF's apply_chat_template(**kwargs) passes them: e.g.
  // {"date_string", "26 Jul 2024"} (Llama 3.1/3.2 print it as "Today Date").
  std::vector<std::pair<std::string, std::string>> variables;
};

// A parsed chat template: parse once, render many conversations. Cheap to copy (shares the parse).
class ChatTemplate {
 public:
  // Parses `source`. Throws InvalidArgument naming the line and what is malformed or not supported.
  explicit ChatTemplate(std::string source);

  // The templates flashring knows by name (for `--chat-template NAME`), verbatim as their models publish
  // them: "smollm2" (SmolLM2-Instruct: ChatML with a default system prompt), "chatml" (plain ChatML),
  // "qwen2" (ChatML, default system "You are a helpful assistant."), "qwen2.5" (Qwen2.5-Instruct, with its
  // tool-calling branches), "llama3" (Meta-Llama-3-8B-Instruct), "llama3.1" (Llama-3.1-8B-Instruct: dates
  // and tools; without tools it renders the system header with "Cutting Knowledge Date" and "Today Date:
  // 26 Jul 2024" unless date_string is given), "llama2" (Llama-2-chat: [INST], <<SYS>>), "mistral"
  // (Mistral-7B-Instruct-v0.1/v0.2: [INST] without a system role), "zephyr" (<|user|>, TinyLlama-chat).
  static std::span<const std::string_view> builtinNames();
  // Throws InvalidArgument listing the known names when `name` is not one.
  static ChatTemplate builtin(std::string_view name);
  static std::string_view builtinSource(std::string_view name);

  // The model's template (tokenizer.chat_template) or, when `forced` is not empty, builtin(forced).
  // Throws InvalidArgument when the model has none (suggesting --chat-template) or it cannot be parsed
  // (naming the model file, the line and what is unsupported, and suggesting --chat-template).
  static ChatTemplate forModel(const gguf::File& file, std::string_view forced = {});

  const std::string& source() const;
  // The builtin this template is ("smollm2", "llama3", ...), or "" for any other template. Templates are
  // compared as token streams, so spelling a newline in a string literal as \n or as a newline is the same.
  std::string_view family() const;

  // Renders the conversation. Throws InvalidArgument when the template refuses it (raise_exception) or
  // fails on it (for example messages[0] of an empty conversation, or a type error), naming the line.
  std::string render(std::span<const ChatMessage> messages, const ChatRenderOptions& options) const;
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt, const std::string& bos_token,
                     const std::string& eos_token) const;

 private:
  struct Program;
  std::shared_ptr<const Program> program_;
};

// One-shot form of ChatTemplate(template_src).render(...).
std::string renderChat(const std::string& template_src, std::span<const ChatMessage> messages,
                       bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token);

// The model's tokenizer.chat_template. Throws InvalidArgument (suggesting --chat-template NAME) when absent.
std::string chatTemplateFromGguf(const gguf::File& file);

// The texts of the model's BOS and EOS tokens (tokenizer.ggml.tokens[bos_token_id / eos_token_id]); empty
// when the model does not name one.
struct ChatSpecialTokens {
  std::string bos, eos;
};
ChatSpecialTokens chatSpecialTokensFromGguf(const gguf::File& file);

}  // namespace flashring
