// Chat templates: hand-written expected renderings of the builtin (real model) templates, the Jinja
// subset's whitespace, scoping and error rules, the GGUF key, and every rendering of
// tests/fixtures/chat/reference.json (jinja2 in transformers' environment, written by
// tests/tools/chat_reference.py) byte for byte. CTest's chat.jinja2_reference runs that script live and
// points ChatReference at its output (FLASHRING_CHAT_REFERENCE) instead of the checked-in file.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "flashring/chat.h"
#include "flashring/gguf.h"
#include "flashring/model_path.h"

using namespace flashring;

namespace {

const std::string kFixtures = std::string(FLASHRING_TEST_SOURCE_DIR) + "/fixtures/chat";

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<ChatMessage> conv(std::initializer_list<std::pair<const char*, const char*>> m) {
  std::vector<ChatMessage> r;
  for (const auto& [role, content] : m) r.push_back({role, content});
  return r;
}

std::string render(std::string_view builtin, const std::vector<ChatMessage>& m, bool agp, const std::string& bos,
                   const std::string& eos) {
  return ChatTemplate::builtin(builtin).render(m, agp, bos, eos);
}

// The InvalidArgument message of f(), or "(no InvalidArgument)".
template <class F>
std::string errorOf(F f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument)";
}

std::string parseError(const std::string& src) {
  return errorOf([&] { ChatTemplate t(src); });
}

std::string jinja(const std::string& src, const std::vector<ChatMessage>& m = {}, bool agp = false) {
  return renderChat(src, m, agp, "<s>", "</s>");
}

// A metadata-only GGUF v3 image (no tensors).
class MiniGguf {
 public:
  void str(const std::string& key, const std::string& v) {
    kv(key, 8, [&] { putStr(v); });
  }
  void u32(const std::string& key, uint32_t v) {
    kv(key, 4, [&] { put(v); });
  }
  void strings(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9, [&] {
      put(uint32_t{8});
      put(static_cast<uint64_t>(v.size()));
      for (const auto& x : v) putStr(x);
    });
  }
  std::vector<uint8_t> image() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F', 3, 0, 0, 0};
    for (uint64_t x : {uint64_t{0}, n_}) {
      for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(x >> (8 * i)));
    }
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  template <class T>
  void put(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) body_.push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
  }
  void putStr(const std::string& s) {
    put(static_cast<uint64_t>(s.size()));
    body_.insert(body_.end(), s.begin(), s.end());
  }
  template <class F>
  void kv(const std::string& key, uint32_t type, F value) {
    putStr(key);
    put(type);
    value();
    ++n_;
  }
  std::vector<uint8_t> body_;
  uint64_t n_ = 0;
};

}  // namespace

// --- the builtin templates, by hand -------------------------------------------------------------------

TEST(ChatTemplate, SmolLM2AddsItsDefaultSystemPrompt) {
  const auto user = conv({{"user", "Hello!"}});
  EXPECT_EQ(render("smollm2", user, true, "<|im_start|>", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render("smollm2", user, false, "", ""),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHello!<|im_end|>\n");
  EXPECT_EQ(render("smollm2", conv({{"system", "Be terse."}, {"user", "Hi"}, {"assistant", "Hello."}}), true, "", ""),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello.<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render("smollm2", {}, true, "", ""), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ChatMLAndQwen2) {
  const auto m = conv({{"user", "Hi"}, {"assistant", ""}, {"tool", "42"}});
  EXPECT_EQ(render("chatml", m, true, "", ""),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render("qwen2", conv({{"user", "Hi"}}), true, "", ""),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render("qwen2.5", conv({{"user", "Hi"}}), false, "", ""),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n");
  // Qwen2.5 wraps tool results in a user turn.
  EXPECT_EQ(render("qwen2.5", conv({{"system", "S"}, {"user", "6*7?"}, {"tool", "42"}}), true, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n6*7?<|im_end|>\n<|im_start|>user\n<tool_response>\n"
            "42\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama3TrimsContentAndStartsWithBos) {
  EXPECT_EQ(
      render("llama3", conv({{"system", "You are terse."}, {"user", "  Hi \n"}}), true, "<|begin_of_text|>",
             "<|eot_id|>"),
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render("llama3", conv({{"user", "x"}}), false, "<B>", ""),
            "<B><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(ChatTemplate, Llama31WithoutTools) {
  const auto user = conv({{"user", "Hello"}});
  EXPECT_EQ(render("llama3.1", user, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  ChatRenderOptions o;
  o.bos_token = "<|begin_of_text|>";
  o.add_generation_prompt = false;
  o.variables = {{"date_string", "02 Dec 2025"}};
  EXPECT_EQ(ChatTemplate::builtin("llama3.1").render(conv({{"system", " Be brief. "}, {"user", "Hi"}}), o),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 02 Dec 2025\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  // A tool result (role "tool"): the ipython header, the content as JSON (a string is iterable).
  EXPECT_EQ(render("llama3.1", conv({{"tool", "42"}}), false, "", ""),
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul "
            "2024\n\n<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n\"42\"<|eot_id|>");
}

TEST(ChatTemplate, Llama2AndMistralInstBlocks) {
  // strip() applies to the whole first turn, <<SYS>> block included: the user's leading space stays.
  const auto m = conv({{"system", "sys"}, {"user", " Hi "}, {"assistant", "Hello"}, {"user", "Again"}});
  EXPECT_EQ(render("llama2", m, true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\n Hi [/INST] Hello </s><s>[INST] Again [/INST]");
  EXPECT_EQ(render("mistral", conv({{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Again"}}), true, "<s>", "</s>"),
            "<s>[INST] Hi [/INST]Hello</s>[INST] Again [/INST]");
  EXPECT_EQ(errorOf([] {
              render("llama2", conv({{"assistant", "first"}}), true, "<s>", "</s>");
            }),
            "chat template refused the conversation: Conversation roles must alternate "
            "user/assistant/user/assistant/...");
  EXPECT_EQ(errorOf([] {
              render("mistral", conv({{"system", "s"}}), true, "<s>", "</s>");
            }),
            "chat template refused the conversation: Conversation roles must alternate "
            "user/assistant/user/assistant/...");
  // Llama 2 drops roles other than user and assistant without a word, as it does under HF.
  EXPECT_EQ(render("llama2", conv({{"user", "a"}, {"tool", "dropped"}, {"user", "b"}}), true, "<s>", "</s>"),
            "<s>[INST] a [/INST]<s>[INST] b [/INST]");
}

TEST(ChatTemplate, ZephyrNewlinesBetweenTagsAreTrimmed) {
  EXPECT_EQ(render("zephyr", conv({{"system", "You are terse."}, {"user", "Hello!"}, {"assistant", "Hi."}}), true,
                   "<s>", "</s>"),
            "<|system|>\nYou are terse.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi.</s>\n<|assistant|>\n");
}

TEST(ChatTemplate, BuiltinsAreTheFixtureTemplatesAndKnowTheirFamily) {
  ASSERT_EQ(ChatTemplate::builtinNames().size(), 9u);
  for (auto name : ChatTemplate::builtinNames()) {
    const std::string file = kFixtures + "/templates/" + std::string(name) + ".jinja";
    EXPECT_EQ(std::string(ChatTemplate::builtinSource(name)), readFile(file)) << file;
    EXPECT_EQ(ChatTemplate::builtin(name).family(), name);
    EXPECT_EQ(ChatTemplate(readFile(file)).family(), name);
  }
  EXPECT_EQ(ChatTemplate(std::string(ChatTemplate::builtinSource("llama3")) + " ").family(), "");
  // The same template with its string literals' newlines spelled as escapes is the same family.
  std::string escaped(ChatTemplate::builtinSource("smollm2"));
  for (size_t at; (at = escaped.find('\n')) != std::string::npos;) escaped.replace(at, 1, "\\n");
  EXPECT_EQ(ChatTemplate(escaped).family(), "smollm2");
  EXPECT_EQ(
      errorOf([] { ChatTemplate::builtin("vicuna"); }),
      "unknown chat template 'vicuna' (known: smollm2|chatml|qwen2|qwen2.5|llama3|llama3.1|llama2|mistral|zephyr)");
}

// --- the Jinja subset ---------------------------------------------------------------------------------

TEST(ChatTemplate, WhitespaceFollowsTrimAndLstripBlocks) {
  // Expected strings are jinja2's (trim_blocks and lstrip_blocks on, keep_trailing_newline off).
  EXPECT_EQ(jinja("a\n  {% if true %}\n  b\n  {% endif %}\nc\n"), "a\n  b\nc");
  EXPECT_EQ(jinja("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(jinja("{{ 'x' }}\n{{ 'y' }}"), "x\ny");
  EXPECT_EQ(jinja("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(jinja("{# c #}\nline\n  {#- d #}\n"), "line");
  EXPECT_EQ(jinja("  {{ 'x' }}  {% if true %}\n  z\n{% endif %}"), "  x    z\n");
  EXPECT_EQ(jinja("a\r\nb\rc"), "a\nb\nc");
}

TEST(ChatTemplate, ScopesAndLoops) {
  EXPECT_EQ(jinja("{% set x = 'out' %}{% for i in [1,2,3] %}{{ x }}{% set x = i %}{{ x }};{% endfor %}{{ x }}"),
            "out1;out2;out3;out");
  EXPECT_EQ(jinja("{% if true %}{% set x = 5 %}{% endif %}{{ x }}"), "5");
  EXPECT_EQ(jinja("{% set ns = namespace(a=1) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}"),
            "4");
  EXPECT_EQ(jinja("{% for i in [1,2,3] %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}"), "13");
  EXPECT_EQ(
      jinja("{% for m in ['a','b','c'] if m != 'b' %}{{ loop.index }}{{ m }}{{ loop.last }}{% else %}E{% endfor %}"),
      "1aFalse2cTrue");
  EXPECT_EQ(jinja("{% for m in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(jinja("{% macro f(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}"), "[1B][23]");
  EXPECT_EQ(jinja("{{ messages|length }}{{ messages[1].content|upper }}", conv({{"user", "a"}, {"assistant", "b"}})),
            "2B");
}

TEST(ChatTemplate, UnsupportedSyntaxIsRefusedWhenParsed) {
  EXPECT_EQ(parseError("x\n{% include 'other.jinja' %}"),
            "chat template, line 2: unsupported tag 'include' (supported: if/elif/else/endif, for/else/endfor, break, "
            "continue, set/endset, macro/endmacro, generation)");
  EXPECT_EQ(parseError("{{ x|wordwrap(3) }}"), "chat template, line 1: unsupported filter 'wordwrap'");
  EXPECT_EQ(parseError("{% if x is prime %}{% endif %}"), "chat template, line 1: unsupported test 'prime'");
  EXPECT_EQ(parseError("{{ x "), "chat template, line 1: '{{' is not closed");
  EXPECT_EQ(parseError("{% if x %}a"), "chat template, line 1: the template ended before 'elif' or 'else' or 'endif'");
  EXPECT_EQ(parseError("{% endif %}"), "chat template, line 1: 'endif' without 'if'");
  EXPECT_EQ(parseError("{% break %}"), "chat template, line 1: 'break' outside a for loop");
  EXPECT_EQ(parseError("{% for x in y recursive %}{% endfor %}"),
            "chat template, line 1: recursive loops are not supported");
  EXPECT_EQ(parseError("{{ (1 }}"), "chat template, line 1: unexpected '}'");
  EXPECT_EQ(parseError("\n\n{{ 'a' 'b' + }}"),
            "chat template, line 3: an expression is missing before the end of the tag");
}

TEST(ChatTemplate, RuntimeErrorsNameTheLine) {
  // jinja2 raises UndefinedError here too; HF would fail the same way.
  EXPECT_EQ(errorOf([] { render("llama3.1", {}, true, "", ""); }),
            "chat template, line 16: list object has no element 0");
  EXPECT_EQ(errorOf([] { jinja("{{ 'a' + 1 }}"); }),
            "chat template, line 1: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(errorOf([] { jinja("\n{{ foo.bar }}"); }), "chat template, line 2: 'foo' is undefined");
  EXPECT_EQ(errorOf([] { jinja("{{ raise_exception('nope ' ~ 1) }}"); }),
            "chat template refused the conversation: nope 1");
}

TEST(ChatTemplate, HostileTemplatesFailCleanly) {
  // A GGUF's template is untrusted input: nesting, value depth, sizes and integer edge cases are bounded
  // and end in InvalidArgument, never in a crash or a hang.
  auto rep = [](const std::string& s, int n) {
    std::string r;
    for (int i = 0; i < n; ++i) r += s;
    return r;
  };
  EXPECT_EQ(parseError("{{ " + rep("(", 5000) + "1" + rep(")", 5000) + " }}"),
            "chat template, line 1: nested more than 200 levels deep");
  EXPECT_EQ(parseError(rep("{% if true %}", 5000) + rep("{% endif %}", 5000)),
            "chat template, line 1: nested more than 200 levels deep");
  EXPECT_EQ(parseError("{{ a" + rep(".b", 100000) + " }}"),
            "chat template, line 1: expression nested more than 500 levels deep");
  EXPECT_EQ(parseError("{{ 1" + rep(" + 1", 100000) + " }}"),
            "chat template, line 1: expression nested more than 500 levels deep");
  EXPECT_EQ(errorOf([] { jinja("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"); }),
            "chat template, line 1: macros nested too deeply");
  EXPECT_EQ(errorOf([] {
              jinja("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}");
            }),
            "chat template, line 1: values nested more than 500 levels deep");
  EXPECT_EQ(jinja("{% set ns = namespace(x=none) %}{% for i in range(20000) %}{% set ns.x = namespace(y=ns.x) %}"
                  "{% endfor %}{% set ns.x = ns %}{{ ns.x.x is defined }}"),
            "True");
  EXPECT_EQ(errorOf([] { jinja("{{ ('a' * 1000000) * 1000000 }}"); }),
            "chat template, line 1: repetition result exceeds 64 MiB");
  EXPECT_EQ(errorOf([] { jinja("{{ (-9223372036854775807 - 1) // -1 }}"); }),
            "chat template, line 1: integer overflow");
  EXPECT_EQ(
      jinja("{{ (-9223372036854775807 - 1) % -1 }} {{ 1 ** 9223372036854775807 }} {{ (-1) ** 9223372036854775807 }}"
            " {{ range(-9223372036854775807, 9223372036854775807, 4611686018427387904)|list|length }}"
            " {{ 'abc'[::9223372036854775807] }}"),
      "0 1 -1 4 a");
  EXPECT_EQ(errorOf([] { jinja("{{ 1e300|int }}"); }), "chat template, line 1: integer overflow");
}

TEST(ChatTemplate, ManyMessagesRenderQuickly) {
  std::vector<ChatMessage> m;
  for (int i = 0; i < 2000; ++i) m.push_back({i % 2 ? "assistant" : "user", std::string(200, 'x')});
  const ChatTemplate t = ChatTemplate::builtin("qwen2.5");
  const auto start = std::chrono::steady_clock::now();
  const std::string out = t.render(m, true, "", "");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(out.size(), 2000u * 200u);
  EXPECT_LT(s, 2.0) << "2000 messages took " << s << " s";
}

// --- GGUF ---------------------------------------------------------------------------------------------

TEST(ChatTemplate, FromGguf) {
  MiniGguf with;
  with.str("tokenizer.chat_template", std::string(ChatTemplate::builtinSource("llama3")));
  with.strings("tokenizer.ggml.tokens", {"<unk>", "<|begin_of_text|>", "<|eot_id|>"});
  with.u32("tokenizer.ggml.bos_token_id", 1);
  with.u32("tokenizer.ggml.eos_token_id", 2);
  const auto img = with.image();
  const auto file = gguf::File::fromMemory(img, "with.gguf");
  EXPECT_EQ(ChatTemplate::forModel(file).family(), "llama3");
  EXPECT_EQ(ChatTemplate::forModel(file, "chatml").family(), "chatml");
  const auto tokens = chatSpecialTokensFromGguf(file);
  EXPECT_EQ(tokens.bos, "<|begin_of_text|>");
  EXPECT_EQ(tokens.eos, "<|eot_id|>");

  MiniGguf without;
  without.str("general.architecture", "llama");
  const auto img2 = without.image();
  const auto bare = gguf::File::fromMemory(img2, "bare.gguf");
  EXPECT_EQ(errorOf([&] { chatTemplateFromGguf(bare); }),
            "bare.gguf has no tokenizer.chat_template (no chat format): choose one with --chat-template "
            "smollm2|chatml|qwen2|qwen2.5|llama3|llama3.1|llama2|mistral|zephyr");
  EXPECT_EQ(ChatTemplate::forModel(bare, "llama2").family(), "llama2");
  EXPECT_TRUE(chatSpecialTokensFromGguf(bare).bos.empty());

  MiniGguf odd;
  odd.str("tokenizer.chat_template",
          "{% for m in messages %}{% filter upper %}{{ m.content }}{% endfilter %}{% endfor %}");
  const auto img3 = odd.image();
  const auto oddf = gguf::File::fromMemory(img3, "odd.gguf");
  EXPECT_EQ(
      errorOf([&] { ChatTemplate::forModel(oddf); }),
      "odd.gguf: its tokenizer.chat_template is not one flashring can run (chat template, line 1: unsupported tag "
      "'filter' (supported: if/elif/else/endif, for/else/endfor, break, continue, set/endset, macro/endmacro, "
      "generation)); force a known format with --chat-template "
      "smollm2|chatml|qwen2|qwen2.5|llama3|llama3.1|llama2|mistral|zephyr");
}

TEST(ChatTemplate, DefaultModelIsSmolLM2) {
  const std::string path = findDefaultModel();
  if (path.empty()) GTEST_SKIP() << "default model not found (" << defaultModelPath() << "); make deps fetches it";
  const auto file = gguf::File::open(path);
  const ChatTemplate t = ChatTemplate::forModel(file);
  EXPECT_EQ(t.family(), "smollm2");
  const auto tokens = chatSpecialTokensFromGguf(file);
  EXPECT_EQ(tokens.bos, "<|im_start|>");
  EXPECT_EQ(tokens.eos, "<|im_end|>");
  EXPECT_EQ(t.render(conv({{"user", "Hi"}}), true, tokens.bos, tokens.eos),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

// --- against jinja2 -----------------------------------------------------------------------------------

TEST(ChatReference, MatchesJinja2Output) {
  const char* live = std::getenv("FLASHRING_CHAT_REFERENCE");
  const std::string path = live ? live : kFixtures + "/reference.json";
  const auto ref = nlohmann::json::parse(readFile(path));
  const auto& cases = ref["cases"];
  ASSERT_GT(cases.size(), 300u) << path;
  std::map<std::string, ChatTemplate> templates;
  size_t outputs = 0, errors = 0;
  for (const auto& c : cases) {
    const std::string file = c["file"];
    auto it = templates.find(file);
    if (it == templates.end()) it = templates.emplace(file, ChatTemplate(readFile(kFixtures + "/" + file))).first;
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    ChatRenderOptions o;
    o.add_generation_prompt = c["add_generation_prompt"];
    o.bos_token = c["bos_token"];
    o.eos_token = c["eos_token"];
    for (const auto& [k, v] : c["variables"].items()) o.variables.emplace_back(k, v.get<std::string>());
    const std::string what = std::string(c["template"]) + " / " + std::string(c["conversation"]) +
                             (o.add_generation_prompt ? " / add_generation_prompt" : "");
    if (c.contains("output")) {
      ++outputs;
      try {
        const std::string got = it->second.render(messages, o);
        const std::string want = c["output"];
        if (got != want) {
          size_t k = 0;
          while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
          ADD_FAILURE() << what << ": first difference at byte " << k << "\n--- jinja2:\n"
                        << want << "\n--- flashring:\n"
                        << got;
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << what << ": flashring failed (" << e.what() << "), jinja2 rendered it";
      }
    } else {
      ++errors;
      const std::string msg = errorOf([&] { it->second.render(messages, o); });
      if (c["raised"].get<bool>()) {
        EXPECT_EQ(msg, "chat template refused the conversation: " + std::string(c["error"])) << what;
      } else {
        EXPECT_NE(msg, "(no InvalidArgument)") << what << ": jinja2 failed (" << c["error"] << "), flashring did not";
      }
    }
  }
  std::printf("[ compared ] %zu renderings and %zu errors of %zu templates with %s (%s)\n", outputs, errors,
              templates.size(), std::string(ref["reference"]).c_str(), live ? "live" : "checked-in fixture");
}
