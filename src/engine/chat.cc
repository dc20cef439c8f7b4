// Chat templates: a Jinja interpreter for the subset HF chat templates use (see flashring/chat.h).
//
// Layout: values (Python semantics: str(), repr(), ==, truthiness, json.dumps), the lexer (jinja2's
// whitespace rules with trim_blocks and lstrip_blocks), the parser (jinja2's grammar and precedence), the
// evaluator (jinja2's scoping: a for loop's body is a new scope on every iteration, `if` is not a scope),
// filters/tests/methods/globals, and the builtin templates.
#include "flashring/chat.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <unordered_map>

#include "flashring/gguf.h"

namespace flashring {
namespace {

// A failure while evaluating: the statement executing it adds the line.
struct EvalError {
  std::string message;
};
// raise_exception(msg) from the template.
struct RaisedError {
  std::string message;
};

[[noreturn]] void evalFail(std::string msg) { throw EvalError{std::move(msg)}; }

// Limits for untrusted templates (a GGUF's is one): nesting of tags and expressions, statements executed,
// size of the text built. Real chat templates stay far below them.
constexpr int kMaxNesting = 200;
constexpr uint64_t kMaxSteps = 2'000'000;
constexpr size_t kMaxBytes = size_t{64} << 20;
constexpr int kMaxExprHeight = 500;
constexpr uint32_t kMaxValueDepth = 500;

// ---------------------------------------------------------------------------------------------------------
// UTF-8 and Python string helpers
// ---------------------------------------------------------------------------------------------------------

// Length in bytes of the UTF-8 sequence starting at s[i] (1 for an invalid byte: it counts as one unit).
size_t utf8Len(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

uint32_t utf8Decode(std::string_view s, size_t i, size_t n) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (n == 1) return c;
  uint32_t cp = c & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  return cp;
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The code points of s as (offset, length) pairs.
std::vector<std::pair<size_t, size_t>> codepoints(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> r;
  r.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8Len(s, i);
    r.emplace_back(i, n);
    i += n;
  }
  return r;
}

size_t codepointCount(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += utf8Len(s, i)) ++n;
  return n;
}

// Python's str.isspace().
bool pySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The whitespace int() and float() skip around a number: str.isspace() but for U+001C..U+001F.
std::string stripNumber(std::string_view s);

// Python's str.strip/lstrip/rstrip: whitespace, or any code point of `chars` when given.
std::string pyStrip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars) {
    for (auto [o, n] : codepoints(*chars)) set.push_back(utf8Decode(*chars, o, n));
  }
  auto strip = [&](uint32_t cp) { return chars ? std::find(set.begin(), set.end(), cp) != set.end() : pySpace(cp); };
  const auto cps = codepoints(s);
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip(utf8Decode(s, cps[b].first, cps[b].second))) ++b;
  if (right)
    while (e > b && strip(utf8Decode(s, cps[e - 1].first, cps[e - 1].second))) --e;
  if (b == e) return {};
  return std::string(s.substr(cps[b].first, cps[e - 1].first + cps[e - 1].second - cps[b].first));
}

std::string stripNumber(std::string_view s) {
  const auto cps = codepoints(s);
  auto space = [&](size_t k) {
    const uint32_t cp = utf8Decode(s, cps[k].first, cps[k].second);
    return pySpace(cp) && !(cp >= 0x1C && cp <= 0x1F);
  };
  size_t b = 0, e = cps.size();
  while (b < e && space(b)) ++b;
  while (e > b && space(e - 1)) --e;
  if (b == e) return {};
  return std::string(s.substr(cps[b].first, cps[e - 1].first + cps[e - 1].second - cps[b].first));
}

std::string asciiMap(std::string_view s, int (*f)(int)) {
  std::string r(s);
  for (char& c : r)
    if (static_cast<unsigned char>(c) < 0x80) c = static_cast<char>(f(static_cast<unsigned char>(c)));
  return r;
}
int toUpperAscii(int c) { return c >= 'a' && c <= 'z' ? c - 32 : c; }
int toLowerAscii(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
bool isAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string pyCapitalize(std::string_view s) {
  std::string r = asciiMap(s, toLowerAscii);
  if (!r.empty()) r[0] = static_cast<char>(toUpperAscii(static_cast<unsigned char>(r[0])));
  return r;
}

// Python's str.title() (ASCII letters): a letter after a non-letter is upper case, others lower case.
std::string pyTitle(std::string_view s) {
  std::string r(s);
  bool prev_cased = false;
  for (char& c : r) {
    if (isAsciiAlpha(c)) {
      c = static_cast<char>(prev_cased ? toLowerAscii(c) : toUpperAscii(c));
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return r;
}

// jinja2's title filter: words begin after runs of whitespace, '-', '(', '{', '[' and '<'.
std::string jinjaTitle(std::string_view s) {
  std::string r;
  bool word_start = true;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8Len(s, i);
    const uint32_t cp = utf8Decode(s, i, n);
    const bool sep = pySpace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    if (sep) {
      word_start = true;
      r.append(s.substr(i, n));
    } else {
      const char c = n == 1 ? static_cast<char>(cp) : 0;
      if (n == 1)
        r += static_cast<char>(word_start ? toUpperAscii(c) : toLowerAscii(c));
      else
        r.append(s.substr(i, n));
      word_start = false;
    }
    i += n;
  }
  return r;
}

// Python's str.replace (an empty `old` inserts `neu` around every code point); count < 0: all.
std::string pyReplace(std::string_view s, std::string_view old, std::string_view neu, int64_t count) {
  std::string r;
  if (old.empty()) {
    int64_t done = 0;
    for (auto [o, n] : codepoints(s)) {
      if (count < 0 || done < count) {
        r.append(neu);
        ++done;
      }
      r.append(s.substr(o, n));
    }
    if (count < 0 || done < count) r.append(neu);
    return r;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, pos);
    if (at == std::string_view::npos) break;
    r.append(s.substr(pos, at - pos));
    r.append(neu);
    pos = at + old.size();
    ++done;
  }
  r.append(s.substr(pos));
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------

struct Value;
struct Interp;
struct Args;
using Items = std::vector<Value>;
struct Map;
struct Callable;

struct Value {
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };
  Kind kind = Kind::Undefined;
  bool tuple = false;  // a list written as a tuple (its repr uses parentheses)
  uint32_t depth = 0;  // nesting of lists and dicts (bounded: printing, comparing and freeing recurse)
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // String; for Undefined, what was undefined (for the error message)
  std::shared_ptr<const Items> list;
  std::shared_ptr<Map> dict;  // a dict (never mutated once built) or Namespace (mutated by set ns.x)
  std::shared_ptr<const Callable> fn;

  static Value undefined(std::string what) {
    Value v;
    v.s = std::move(what);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = Kind::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::Int;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.kind = Kind::Float;
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    Value v;
    v.kind = Kind::String;
    v.s = std::move(x);
    return v;
  }
  static Value makeList(Items items, bool is_tuple = false) {
    Value v;
    v.kind = Kind::List;
    v.tuple = is_tuple;
    v.depth = nestedDepth(items);
    v.list = std::make_shared<const Items>(std::move(items));
    return v;
  }
  static Value makeDict(std::shared_ptr<Map> d);
  static uint32_t nestedDepth(const Items& items);
  static Value function(std::shared_ptr<const Callable> f) {
    Value v;
    v.kind = Kind::Function;
    v.fn = std::move(f);
    return v;
  }

  bool isUndefined() const { return kind == Kind::Undefined; }
  bool isNumber() const { return kind == Kind::Bool || kind == Kind::Int || kind == Kind::Float; }
};

struct Map {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python dicts
  const Value* find(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
  void set(const std::string& key, Value v) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(v);
        return;
      }
    }
    items.emplace_back(key, std::move(v));
  }
};

uint32_t Value::nestedDepth(const Items& items) {
  uint32_t d = 0;
  for (const auto& x : items) d = std::max(d, x.depth);
  if (d + 1 > kMaxValueDepth) evalFail(fmt::format("values nested more than {} levels deep", kMaxValueDepth));
  return d + 1;
}

Value Value::makeDict(std::shared_ptr<Map> d) {
  uint32_t depth = 0;
  for (const auto& kv : d->items) depth = std::max(depth, kv.second.depth);
  if (depth + 1 > kMaxValueDepth) evalFail(fmt::format("values nested more than {} levels deep", kMaxValueDepth));
  Value v;
  v.kind = Kind::Dict;
  v.dict = std::move(d);
  v.depth = depth + 1;
  return v;
}

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Callable {
  std::string name;
  std::function<Value(Interp&, Args&)> call;
};

Value makeFunction(std::string name, std::function<Value(Interp&, Args&)> call) {
  return Value::function(std::make_shared<const Callable>(Callable{std::move(name), std::move(call)}));
}

const char* typeName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "Undefined";
    case Value::Kind::None:
      return "NoneType";
    case Value::Kind::Bool:
      return "bool";
    case Value::Kind::Int:
      return "int";
    case Value::Kind::Float:
      return "float";
    case Value::Kind::String:
      return "str";
    case Value::Kind::List:
      return v.tuple ? "tuple" : "list";
    case Value::Kind::Dict:
      return "dict";
    case Value::Kind::Namespace:
      return "Namespace";
    case Value::Kind::Function:
      return "function";
  }
  return "?";
}

[[noreturn]] void failUndefined(const Value& v) { evalFail(v.s.empty() ? std::string("a value is undefined") : v.s); }

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return false;
    case Value::Kind::Bool:
      return v.b;
    case Value::Kind::Int:
      return v.i != 0;
    case Value::Kind::Float:
      return v.f != 0;
    case Value::Kind::String:
      return !v.s.empty();
    case Value::Kind::List:
      return !v.list->empty();
    case Value::Kind::Dict:
      return !v.dict->items.empty();
    case Value::Kind::Namespace:
    case Value::Kind::Function:
      return true;
  }
  return false;
}

// Python's repr(float).
std::string pyFloat(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x < 0 ? "-inf" : "inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));  // [-]d[.ddd]e±XX, shortest round trip
  std::string sign;
  if (sci.front() == '-') {
    sign = "-";
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e))
    if (c != '.') digits += c;
  int exp10 = 0;
  std::from_chars(sci.data() + e + (sci[e + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exp10);
  const int decpt = exp10 + 1;  // digits d1 d2 ... represent 0.d1d2... * 10^decpt
  const int nd = static_cast<int>(digits.size());
  std::string r = sign;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      r += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
    } else if (decpt >= nd) {
      r += digits + std::string(static_cast<size_t>(decpt - nd), '0') + ".0";
    } else {
      r += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
    }
  } else {
    r += digits.substr(0, 1);
    if (nd > 1) r += "." + digits.substr(1);
    const int pe = decpt - 1;
    r += fmt::format("e{}{:02d}", pe < 0 ? '-' : '+', pe < 0 ? -pe : pe);
  }
  return r;
}

// Python's repr(str). Non-printable code points beyond ASCII are escaped for C1 controls, Unicode spaces
// other than U+0020 and a few format characters; all others are printed as they are.
std::string pyReprString(std::string_view s) {
  const bool dq = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos;
  const char q = dq ? '"' : '\'';
  std::string r(1, q);
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8Len(s, i);
    const uint32_t cp = utf8Decode(s, i, n);
    if (cp == '\\') {
      r += "\\\\";
    } else if (cp == static_cast<uint32_t>(q)) {
      r += '\\';
      r += q;
    } else if (cp == '\n') {
      r += "\\n";
    } else if (cp == '\r') {
      r += "\\r";
    } else if (cp == '\t') {
      r += "\\t";
    } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0xA0) || cp == 0xAD) {
      r += fmt::format("\\x{:02x}", cp);
    } else if (cp > 0xFF && ((pySpace(cp) && cp != 0x20) || (cp >= 0x200B && cp <= 0x200F) ||
                             (cp >= 0x2060 && cp <= 0x2064) || cp == 0xFEFF)) {
      r += fmt::format("\\u{:04x}", cp);
    } else {
      r.append(s.substr(i, n));
    }
    i += n;
  }
  r += q;
  return r;
}

std::string repr(const Value& v);

// Python's str(v); Undefined prints as nothing (jinja2's default Undefined).
std::string toStr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return {};
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return v.b ? "True" : "False";
    case Value::Kind::Int:
      return std::to_string(v.i);
    case Value::Kind::Float:
      return pyFloat(v.f);
    case Value::Kind::String:
      return v.s;
    case Value::Kind::List:
    case Value::Kind::Dict:
      return repr(v);
    case Value::Kind::Namespace:
      return "<Namespace>";
    case Value::Kind::Function:
      return "<function " + v.fn->name + ">";
  }
  return {};
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::String:
      return pyReprString(v.s);
    case Value::Kind::List: {
      std::string r = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) r += (k ? ", " : "") + repr((*v.list)[k]);
      if (v.tuple && v.list->size() == 1) r += ",";
      return r + (v.tuple ? ")" : "]");
    }
    case Value::Kind::Dict: {
      std::string r = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        r += (first ? "" : ", ") + pyReprString(k) + ": " + repr(x);
        first = false;
      }
      return r + "}";
    }
    default:
      return toStr(v);
  }
}

double asDouble(const Value& v) {
  return v.kind == Value::Kind::Float  ? v.f
         : v.kind == Value::Kind::Bool ? (v.b ? 1.0 : 0.0)
                                       : static_cast<double>(v.i);
}
int64_t asInt(const Value& v) { return v.kind == Value::Kind::Bool ? (v.b ? 1 : 0) : v.i; }
bool isIntLike(const Value& v) { return v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool; }

bool equals(const Value& a, const Value& b) {
  if (a.isNumber() && b.isNumber()) {
    if (isIntLike(a) && isIntLike(b)) return asInt(a) == asInt(b);
    return asDouble(a) == asDouble(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return true;
    case Value::Kind::String:
      return a.s == b.s;
    case Value::Kind::List: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Value::Kind::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, x] : a.dict->items) {
        const Value* y = b.dict->find(k);
        if (!y || !equals(x, *y)) return false;
      }
      return true;
    }
    case Value::Kind::Namespace:
      return a.dict == b.dict;
    case Value::Kind::Function:
      return a.fn == b.fn;
    default:
      return false;
  }
}

// <0, 0, >0 for a < b, a == b, a > b; a TypeError (as Python) for values that have no order.
int compare(const Value& a, const Value& b, std::string_view op) {
  if (a.isUndefined()) failUndefined(a);
  if (b.isUndefined()) failUndefined(b);
  if (a.isNumber() && b.isNumber()) {
    if (isIntLike(a) && isIntLike(b)) return asInt(a) < asInt(b) ? -1 : asInt(a) > asInt(b) ? 1 : 0;
    const double x = asDouble(a), y = asDouble(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Value::Kind::String && b.kind == Value::Kind::String)
    return a.s.compare(b.s) < 0 ? -1 : a.s == b.s ? 0 : 1;
  if (a.kind == Value::Kind::List && b.kind == Value::Kind::List) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (!equals((*a.list)[k], (*b.list)[k])) return compare((*a.list)[k], (*b.list)[k], op);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  evalFail(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, typeName(a), typeName(b)));
}

// The items `for` iterates: a list's elements, a dict's keys, a string's code points; Undefined is empty.
Items iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return {};
    case Value::Kind::List:
      return *v.list;
    case Value::Kind::Dict: {
      Items r;
      for (const auto& [k, x] : v.dict->items) r.push_back(Value::string(k));
      return r;
    }
    case Value::Kind::String: {
      Items r;
      for (auto [o, n] : codepoints(v.s)) r.push_back(Value::string(v.s.substr(o, n)));
      return r;
    }
    default:
      evalFail(fmt::format("'{}' object is not iterable", typeName(v)));
  }
}

bool contains(const Value& hay, const Value& needle) {
  switch (hay.kind) {
    case Value::Kind::Undefined:
      return false;
    case Value::Kind::String:
      if (needle.kind != Value::Kind::String)
        evalFail(fmt::format("'in <string>' requires string as left operand, not {}", typeName(needle)));
      return hay.s.find(needle.s) != std::string::npos;
    case Value::Kind::List:
      for (const auto& x : *hay.list)
        if (equals(x, needle)) return true;
      return false;
    case Value::Kind::Dict:
      return needle.kind == Value::Kind::String && hay.dict->find(needle.s) != nullptr;
    default:
      evalFail(fmt::format("argument of type '{}' is not iterable", typeName(hay)));
  }
}

size_t length(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return 0;
    case Value::Kind::String:
      return codepointCount(v.s);
    case Value::Kind::List:
      return v.list->size();
    case Value::Kind::Dict:
      return v.dict->items.size();
    default:
      evalFail(fmt::format("object of type '{}' has no len()", typeName(v)));
  }
}

// HF's tojson: json.dumps(x, ensure_ascii, indent, separators, sort_keys).
struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // the indent unit ("    " for indent=4); none: one line
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

void jsonString(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8Len(s, i);
    const uint32_t cp = utf8Decode(s, i, n);
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (cp < 0x20) {
          out += fmt::format("\\u{:04x}", cp);
        } else if (ensure_ascii && cp >= 0x7F) {  // json.dumps escapes all but printable ASCII
          if (cp >= 0x10000) {
            const uint32_t v = cp - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else {
            out += fmt::format("\\u{:04x}", cp);
          }
        } else {
          out.append(s.substr(i, n));
        }
    }
    i += n;
  }
  out += '"';
}

void toJson(std::string& out, const Value& v, const JsonOptions& o, int depth) {
  auto newline = [&](int d) {
    out += '\n';
    for (int k = 0; k < d; ++k) out += *o.indent;
  };
  switch (v.kind) {
    case Value::Kind::None:
      out += "null";
      return;
    case Value::Kind::Bool:
      out += v.b ? "true" : "false";
      return;
    case Value::Kind::Int:
      out += std::to_string(v.i);
      return;
    case Value::Kind::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : pyFloat(v.f);
      return;
    case Value::Kind::String:
      jsonString(out, v.s, o.ensure_ascii);
      return;
    case Value::Kind::List: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += o.item_sep;
        if (o.indent) newline(depth + 1);
        toJson(out, (*v.list)[k], o, depth + 1);
      }
      if (o.indent) newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += o.item_sep;
        if (o.indent) newline(depth + 1);
        jsonString(out, items[k]->first, o.ensure_ascii);
        out += o.key_sep;
        toJson(out, items[k]->second, o, depth + 1);
      }
      if (o.indent) newline(depth);
      out += '}';
      return;
    }
    default:
      evalFail(fmt::format("Object of type {} is not JSON serializable", typeName(v)));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------------------

enum class Tok : uint8_t { Name, String, Int, Float, Op, End };

struct Token {
  Tok kind = Tok::End;
  std::string text;  // Name, Op, String (decoded)
  int64_t ival = 0;
  double fval = 0;
  int line = 0;
};

struct Piece {
  enum class Kind : uint8_t { Text, Output, Statement } kind = Kind::Text;
  std::string text;
  std::vector<Token> tokens;  // Output/Statement, ended by an End token
  int line = 0;
};

[[noreturn]] void syntaxFail(int line, const std::string& msg) {
  throw InvalidArgument(fmt::format("chat template, line {}: {}", line, msg));
}

bool asciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python's \s over the text after position `from` (for the whitespace-control '-' after a tag).
size_t skipPySpace(std::string_view s, size_t from) {
  while (from < s.size()) {
    const size_t n = utf8Len(s, from);
    if (!pySpace(utf8Decode(s, from, n))) break;
    from += n;
  }
  return from;
}

bool allPySpace(std::string_view s) { return skipPySpace(s, 0) == s.size(); }

// Python's "unicode-escape" decoding of a string literal's body (jinja2 does exactly that).
std::string decodeEscapes(std::string_view body, int line) {
  std::string r;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      r += body[i];
      continue;
    }
    const char c = body[++i];
    auto hex = [&](size_t digits) {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size()) syntaxFail(line, "truncated \\x/\\u escape in a string literal");
        const char h = body[i + k];
        const int d = h >= '0' && h <= '9'   ? h - '0'
                      : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                             : -1;
        if (d < 0) syntaxFail(line, "malformed \\x/\\u escape in a string literal");
        cp = cp * 16 + static_cast<uint32_t>(d);
      }
      i += digits;
      appendUtf8(r, cp);
    };
    switch (c) {
      case '\n':
        break;  // line continuation
      case '\\':
        r += '\\';
        break;
      case '\'':
        r += '\'';
        break;
      case '"':
        r += '"';
        break;
      case 'a':
        r += '\a';
        break;
      case 'b':
        r += '\b';
        break;
      case 'f':
        r += '\f';
        break;
      case 'n':
        r += '\n';
        break;
      case 'r':
        r += '\r';
        break;
      case 't':
        r += '\t';
        break;
      case 'v':
        r += '\v';
        break;
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      case 'N':
        syntaxFail(line, "\\N{...} escapes are not supported");
      default:
        if (c >= '0' && c <= '7') {
          uint32_t cp = static_cast<uint32_t>(c - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
            cp = cp * 8 + static_cast<uint32_t>(body[++i] - '0');
          appendUtf8(r, cp);
        } else {
          r += '\\';
          r += c;
        }
    }
  }
  return r;
}

class Lexer {
 public:
  explicit Lexer(std::string_view raw) {
    // jinja2 normalizes newlines and (keep_trailing_newline=False) drops one trailing newline.
    src_.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\r') {
        src_ += '\n';
        if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      } else {
        src_ += raw[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Piece> run() {
    std::vector<Piece> out;
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      size_t q = pos;
      while (q + 1 < src_.size() &&
             !(src_[q] == '{' && (src_[q + 1] == '{' || src_[q + 1] == '%' || src_[q + 1] == '#')))
        ++q;
      if (q + 1 >= src_.size()) {
        addText(out, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[q + 1];
      size_t p = q + 2;
      char sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      std::string text = src_.substr(pos, q - pos);
      if (sign == '-') {
        // Python's str.rstrip(): trailing whitespace.
        text = pyStrip(text, std::nullopt, false, true);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: only whitespace between the line start and a block or comment tag is removed.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && allPySpace(std::string_view(text).substr(l_pos)))
          text.resize(l_pos);
      }
      addText(out, text, pos);
      const int line = lineAt(q);
      if (kind == '#') {
        const size_t e = src_.find("#}", p);
        if (e == std::string::npos) syntaxFail(line, "comment {# is not closed");
        const char esign = e > p && (src_[e - 1] == '-' || src_[e - 1] == '+') ? src_[e - 1] : 0;
        pos = afterEnd(e + 2, esign, true);
      } else {
        Piece piece;
        piece.kind = kind == '{' ? Piece::Kind::Output : Piece::Kind::Statement;
        piece.line = line;
        pos = tokenize(p, kind == '{', piece.tokens, line);
        out.push_back(std::move(piece));
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    return out;
  }

 private:
  void addText(std::vector<Piece>& out, std::string text, size_t at) {
    if (text.empty()) return;
    Piece p;
    p.kind = Piece::Kind::Text;
    p.text = std::move(text);
    p.line = lineAt(at);
    out.push_back(std::move(p));
  }

  int lineAt(size_t at) {
    for (; line_pos_ < at && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  // Position after a tag's end: '-' strips all following whitespace, '+' nothing, and a plain block or
  // comment end one newline (trim_blocks).
  size_t afterEnd(size_t pos, char sign, bool block) {
    if (sign == '-') return skipPySpace(src_, pos);
    if (sign != '+' && block && pos < src_.size() && src_[pos] == '\n') return pos + 1;
    return pos;
  }

  size_t tokenize(size_t p, bool var, std::vector<Token>& toks, int open_line) {
    std::vector<char> balance;
    const std::string_view s = src_;
    while (true) {
      while (p < s.size() && asciiSpace(s[p])) ++p;
      if (p >= s.size()) syntaxFail(open_line, var ? "'{{' is not closed" : "'{%' is not closed");
      const int line = lineAt(p);
      if (balance.empty()) {
        const std::string_view close = var ? "}}" : "%}";
        if ((s[p] == '-' || (s[p] == '+' && !var)) && s.substr(p + 1, 2) == close) {
          toks.push_back(Token{Tok::End, {}, 0, 0, line});
          return afterEnd(p + 3, s[p], !var);
        }
        if (s.substr(p, 2) == close) {
          toks.push_back(Token{Tok::End, {}, 0, 0, line});
          return afterEnd(p + 2, 0, !var);
        }
      }
      const char c = s[p];
      Token t;
      t.line = line;
      if (c >= '0' && c <= '9') {
        size_t e = p;
        while (e < s.size() && ((s[e] >= '0' && s[e] <= '9') || s[e] == '_')) ++e;
        bool is_float = false;
        if (e + 1 < s.size() && s[e] == '.' && s[e + 1] >= '0' && s[e + 1] <= '9') {
          is_float = true;
          ++e;
          while (e < s.size() && ((s[e] >= '0' && s[e] <= '9') || s[e] == '_')) ++e;
        }
        if (e < s.size() && (s[e] == 'e' || s[e] == 'E')) {
          size_t k = e + 1;
          if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
          if (k < s.size() && s[k] >= '0' && s[k] <= '9') {
            is_float = true;
            e = k;
            while (e < s.size() && s[e] >= '0' && s[e] <= '9') ++e;
          }
        }
        std::string num;
        for (size_t k = p; k < e; ++k)
          if (s[k] != '_') num += s[k];
        if (is_float) {
          t.kind = Tok::Float;
          t.fval = std::strtod(num.c_str(), nullptr);
        } else {
          t.kind = Tok::Int;
          const auto r = std::from_chars(num.data(), num.data() + num.size(), t.ival);
          if (r.ec != std::errc()) syntaxFail(line, "integer literal " + num + " is out of range");
        }
        p = e;
      } else if (isAsciiAlpha(c) || c == '_') {
        size_t e = p;
        while (e < s.size() && (isAsciiAlpha(s[e]) || s[e] == '_' || (s[e] >= '0' && s[e] <= '9'))) ++e;
        t.kind = Tok::Name;
        t.text = std::string(s.substr(p, e - p));
        p = e;
      } else if (c == '\'' || c == '"') {
        size_t e = p + 1;
        while (e < s.size() && s[e] != c) e += s[e] == '\\' ? 2 : 1;
        if (e >= s.size()) syntaxFail(line, "string literal is not closed");
        t.kind = Tok::String;
        t.text = decodeEscapes(s.substr(p + 1, e - p - 1), line);
        p = e + 1;
      } else {
        static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        t.kind = Tok::Op;
        for (auto op : kTwo) {
          if (s.substr(p, 2) == op) t.text = std::string(op);
        }
        if (t.text.empty()) {
          if (std::string_view("+-/*%~[](){}<>=.:|,;").find(c) == std::string_view::npos)
            syntaxFail(line, fmt::format("unexpected character '{}'", c));
          t.text = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') {
            balance.push_back(c);
          } else if (c == ')' || c == ']' || c == '}') {
            const char want = c == ')' ? '(' : c == ']' ? '[' : '{';
            if (balance.empty() || balance.back() != want) syntaxFail(line, fmt::format("unexpected '{}'", c));
            balance.pop_back();
          }
        }
        p += t.text.size();
      }
      toks.push_back(std::move(t));
    }
  }

  std::string src_;
  size_t line_pos_ = 0;
  int line_ = 1;
};

// ---------------------------------------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind : uint8_t {
    Const,
    Name,
    GetAttr,
    GetItem,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Pos,
    Binary,
    Compare,
    And,
    Or,
    Not,
    Cond,
    ListLit,
    TupleLit,
    DictLit
  };
  Kind kind = Kind::Const;
  int line = 0;
  int height = 1;                // of the tree below it (see Parser::sealed)
  Value value;                   // Const
  std::string name;              // Name, GetAttr, Filter, Test, Binary (operator)
  std::vector<ExprPtr> kids;     // operands; Slice: obj, start, stop, step (null when absent)
  std::vector<std::string> ops;  // Compare operators
  std::vector<std::string> kw;   // Call/Filter/Test: names of the trailing keyword arguments
  bool negate = false;           // Test: `is not`
  using Impl = Value (*)(Interp&, const Value&, Args&);
  Impl impl = nullptr;  // Filter/Test
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind : uint8_t { Text, Output, If, For, Set, SetBlock, Break, Continue, Macro, Generation };
  Kind kind = Kind::Text;
  int line = 0;
  std::string text;                  // Text
  ExprPtr expr;                      // Output, Set value, For iterable
  std::vector<ExprPtr> conds;        // If: one per branch
  std::vector<Body> bodies;          // If: one per branch (+ else); For: body, else; Set block; Macro
  std::vector<std::string> targets;  // For/Set target names; Set: {ns, attr} when attr_target
  bool attr_target = false;
  bool has_else = false;
  ExprPtr filter;                   // For ... if
  std::vector<std::string> params;  // Macro
  std::vector<ExprPtr> defaults;    // Macro: default of each parameter (null when none)
};

}  // namespace

struct ChatTemplate::Program {
  std::string source;
  Body body;
  std::string family;
};

namespace {

// ---------------------------------------------------------------------------------------------------------
// Filters and tests (declared for the parser, which resolves names)
// ---------------------------------------------------------------------------------------------------------

Expr::Impl findFilter(std::string_view name);
Expr::Impl findTest(std::string_view name);

// ---------------------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------------------

constexpr std::string_view kSupportedTags =
    "if/elif/else/endif, for/else/endfor, break, continue, set/endset, macro/endmacro, generation";

class Parser {
 public:
  explicit Parser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  Body parseTemplate() {
    Body body;
    const std::string end = parseBody(body, {});
    if (!end.empty()) syntaxFail(line_, "unexpected '" + end + "'");
    return body;
  }

 private:
  // Parses statements into `body` until a statement tag named in `ends` (returned, its tokens positioned
  // after the name) or the end of the template (returns "").
  std::string parseBody(Body& body, std::initializer_list<std::string_view> ends) {
    const Nest nest(nesting_, line_);
    while (pi_ < pieces_.size()) {
      Piece& p = pieces_[pi_++];
      line_ = p.line;
      if (p.kind == Piece::Kind::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->line = p.line;
        s->text = std::move(p.text);
        body.push_back(std::move(s));
        continue;
      }
      toks_ = &p.tokens;
      ti_ = 0;
      if (p.kind == Piece::Kind::Output) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->line = p.line;
        s->expr = parseTuple(true);
        expectEnd();
        body.push_back(std::move(s));
        continue;
      }
      const Token& t = next();
      if (t.kind != Tok::Name) syntaxFail(t.line, "expected a tag name after '{%'");
      const std::string tag = t.text;
      for (auto e : ends)
        if (tag == e) return tag;
      body.push_back(parseStatement(tag, t.line));
    }
    if (ends.size() != 0) {
      std::string want;
      for (auto e : ends) want += (want.empty() ? "" : " or ") + std::string("'") + std::string(e) + "'";
      syntaxFail(line_, "the template ended before " + want);
    }
    return {};
  }

  std::unique_ptr<Stmt> parseStatement(const std::string& tag, int line) {
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (tag == "if") {
      s->kind = Stmt::Kind::If;
      s->conds.push_back(parseTuple(false));
      expectEnd();
      while (true) {
        s->bodies.emplace_back();
        const std::string end = parseBody(s->bodies.back(), {"elif", "else", "endif"});
        if (end == "elif") {
          s->conds.push_back(parseTuple(false));
          expectEnd();
        } else if (end == "else") {
          expectEnd();
          s->has_else = true;
          s->bodies.emplace_back();
          if (parseBody(s->bodies.back(), {"endif"}).empty()) syntaxFail(line, "'if' is not closed");
          expectEnd();
          break;
        } else {
          expectEnd();
          break;
        }
      }
    } else if (tag == "for") {
      s->kind = Stmt::Kind::For;
      do {
        const Token& n = next();
        if (n.kind != Tok::Name) syntaxFail(n.line, "expected a loop variable name after 'for'");
        s->targets.push_back(n.text);
      } while (acceptOp(","));
      if (!acceptName("in")) syntaxFail(line, "expected 'in' in 'for'");
      s->expr = parseTuple(false);
      if (acceptName("if")) s->filter = parseExpression(true);
      if (peek().kind == Tok::Name && peek().text == "recursive") syntaxFail(line, "recursive loops are not supported");
      expectEnd();
      ++loop_depth_;
      s->bodies.emplace_back();
      std::string end = parseBody(s->bodies.back(), {"else", "endfor"});
      --loop_depth_;
      if (end == "else") {
        expectEnd();
        s->has_else = true;
        s->bodies.emplace_back();
        end = parseBody(s->bodies.back(), {"endfor"});
      }
      expectEnd();
    } else if (tag == "set") {
      const Token& n = next();
      if (n.kind != Tok::Name) syntaxFail(n.line, "expected a variable name after 'set'");
      s->targets.push_back(n.text);
      if (acceptOp(".")) {
        const Token& a = next();
        if (a.kind != Tok::Name) syntaxFail(a.line, "expected an attribute name after '.'");
        s->targets.push_back(a.text);
        s->attr_target = true;
      } else {
        while (acceptOp(",")) {
          const Token& m = next();
          if (m.kind != Tok::Name) syntaxFail(m.line, "expected a variable name in 'set'");
          s->targets.push_back(m.text);
        }
      }
      if (acceptOp("=")) {
        s->kind = Stmt::Kind::Set;
        s->expr = parseTuple(true);
        expectEnd();
      } else {
        if (s->attr_target || s->targets.size() != 1) syntaxFail(line, "a block 'set' takes one variable name");
        if (peek().kind == Tok::Op && peek().text == "|")
          syntaxFail(line, "filters on a block 'set' are not supported");
        expectEnd();
        s->kind = Stmt::Kind::SetBlock;
        s->bodies.emplace_back();
        if (parseBody(s->bodies.back(), {"endset"}).empty()) syntaxFail(line, "'set' is not closed");
        expectEnd();
      }
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) syntaxFail(line, "'" + tag + "' outside a for loop");
      s->kind = tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      expectEnd();
    } else if (tag == "generation") {
      s->kind = Stmt::Kind::Generation;
      expectEnd();
      s->bodies.emplace_back();
      parseBody(s->bodies.back(), {"endgeneration"});
      expectEnd();
    } else if (tag == "macro") {
      s->kind = Stmt::Kind::Macro;
      const Token& n = next();
      if (n.kind != Tok::Name) syntaxFail(n.line, "expected a macro name");
      s->targets.push_back(n.text);
      expectOp("(");
      if (!acceptOp(")")) {
        do {
          const Token& a = next();
          if (a.kind != Tok::Name) syntaxFail(a.line, "expected a parameter name");
          s->params.push_back(a.text);
          s->defaults.push_back(acceptOp("=") ? parseExpression(true) : nullptr);
        } while (acceptOp(","));
        expectOp(")");
      }
      expectEnd();
      const int saved_depth = loop_depth_;
      loop_depth_ = 0;
      s->bodies.emplace_back();
      if (parseBody(s->bodies.back(), {"endmacro"}).empty()) syntaxFail(line, "'macro' is not closed");
      loop_depth_ = saved_depth;
      if (peek().kind == Tok::Name) next();  // {% endmacro name %}
      expectEnd();
    } else {
      static const std::map<std::string, std::string, std::less<>> kKnown = {
          {"elif", "'elif' without 'if'"},
          {"else", "'else' without 'if' or 'for'"},
          {"endif", "'endif' without 'if'"},
          {"endfor", "'endfor' without 'for'"},
          {"endset", "'endset' without 'set'"},
          {"endmacro", "'endmacro' without 'macro'"},
          {"endgeneration", "'endgeneration' without 'generation'"}};
      if (auto it = kKnown.find(tag); it != kKnown.end()) syntaxFail(line, it->second);
      syntaxFail(line, fmt::format("unsupported tag '{}' (supported: {})", tag, kSupportedTags));
    }
    return s;
  }

  // --- tokens ---
  const Token& peek(size_t ahead = 0) const {
    const size_t k = std::min(ti_ + ahead, toks_->size() - 1);
    return (*toks_)[k];
  }
  const Token& next() {
    const Token& t = peek();
    if (ti_ < toks_->size() - 1) ++ti_;
    return t;
  }
  bool acceptOp(std::string_view op) {
    if (peek().kind == Tok::Op && peek().text == op) {
      next();
      return true;
    }
    return false;
  }
  bool acceptName(std::string_view n) {
    if (peek().kind == Tok::Name && peek().text == n) {
      next();
      return true;
    }
    return false;
  }
  void expectOp(std::string_view op) {
    if (!acceptOp(op)) syntaxFail(peek().line, fmt::format("expected '{}', found {}", op, describe(peek())));
  }
  void expectEnd() {
    if (peek().kind != Tok::End) syntaxFail(peek().line, "expected the end of the tag, found " + describe(peek()));
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Tok::End:
        return "the end of the tag";
      case Tok::String:
        return "a string";
      case Tok::Int:
      case Tok::Float:
        return "a number";
      default:
        return "'" + t.text + "'";
    }
  }

  // Records a finished node's height; chains such as a.b.c... or a + b + c ... are built in loops, but
  // evaluating (and destroying) them recurses, so their height is bounded like the nesting.
  static ExprPtr sealed(ExprPtr e) {
    int h = 0;
    for (const auto& k : e->kids)
      if (k) h = std::max(h, k->height);
    e->height = h + 1;
    if (e->height > kMaxExprHeight)
      syntaxFail(e->line, fmt::format("expression nested more than {} levels deep", kMaxExprHeight));
    return e;
  }

  ExprPtr node(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // --- expressions (jinja2's parser, same precedence) ---
  ExprPtr parseTuple(bool condexpr) {
    const int line = peek().line;
    ExprPtr first = parseExpression(condexpr);
    if (!(peek().kind == Tok::Op && peek().text == ",")) return first;
    auto t = node(Expr::Kind::TupleLit, line);
    t->kids.push_back(std::move(first));
    while (acceptOp(",")) {
      if (peek().kind == Tok::End || (peek().kind == Tok::Name && (peek().text == "if" || peek().text == "recursive")))
        break;
      t->kids.push_back(parseExpression(condexpr));
    }
    return sealed(std::move(t));
  }

  struct Nest {
    explicit Nest(int& d, int line) : depth(d) {
      if (++depth > kMaxNesting) syntaxFail(line, fmt::format("nested more than {} levels deep", kMaxNesting));
    }
    ~Nest() { --depth; }
    int& depth;
  };

  ExprPtr parseExpression(bool condexpr) {
    const Nest nest(nesting_, peek().line);
    ExprPtr e = parseOr();
    if (!condexpr) return e;
    while (peek().kind == Tok::Name && peek().text == "if") {
      const int line = next().line;
      auto c = node(Expr::Kind::Cond, line);
      ExprPtr test = parseOr();
      ExprPtr otherwise = acceptName("else") ? parseExpression(true) : nullptr;
      c->kids.push_back(std::move(test));
      c->kids.push_back(std::move(e));
      c->kids.push_back(std::move(otherwise));
      e = sealed(std::move(c));
    }
    return e;
  }

  ExprPtr parseOr() {
    ExprPtr e = parseAnd();
    while (peek().kind == Tok::Name && peek().text == "or") {
      auto o = node(Expr::Kind::Or, next().line);
      o->kids.push_back(std::move(e));
      o->kids.push_back(parseAnd());
      e = sealed(std::move(o));
    }
    return e;
  }

  ExprPtr parseAnd() {
    ExprPtr e = parseNot();
    while (peek().kind == Tok::Name && peek().text == "and") {
      auto a = node(Expr::Kind::And, next().line);
      a->kids.push_back(std::move(e));
      a->kids.push_back(parseNot());
      e = sealed(std::move(a));
    }
    return e;
  }

  ExprPtr parseNot() {
    if (peek().kind == Tok::Name && peek().text == "not") {
      const Nest nest(nesting_, peek().line);
      auto n = node(Expr::Kind::Not, next().line);
      n->kids.push_back(parseNot());
      return sealed(std::move(n));
    }
    return parseCompare();
  }

  ExprPtr parseCompare() {
    const int line = peek().line;
    ExprPtr first = parseMath1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      const Token& t = peek();
      if (t.kind == Tok::Op &&
          (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == "<=" || t.text == ">" || t.text == ">=")) {
        op = t.text;
        next();
      } else if (t.kind == Tok::Name && t.text == "in") {
        op = "in";
        next();
      } else if (t.kind == Tok::Name && t.text == "not" && peek(1).kind == Tok::Name && peek(1).text == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::Compare, line);
        cmp->kids.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->kids.push_back(parseMath1());
    }
    return cmp ? sealed(std::move(cmp)) : std::move(first);
  }

  ExprPtr binary(std::string op, ExprPtr l, ExprPtr r, int line) {
    auto b = node(Expr::Kind::Binary, line);
    b->name = std::move(op);
    b->kids.push_back(std::move(l));
    b->kids.push_back(std::move(r));
    return sealed(std::move(b));
  }

  ExprPtr parseMath1() {
    ExprPtr e = parseConcat();
    while (peek().kind == Tok::Op && (peek().text == "+" || peek().text == "-")) {
      const Token& t = next();
      std::string op = t.text;
      e = binary(op, std::move(e), parseConcat(), t.line);
    }
    return e;
  }

  ExprPtr parseConcat() {
    ExprPtr e = parseMath2();
    while (peek().kind == Tok::Op && peek().text == "~") {
      const int line = next().line;
      e = binary("~", std::move(e), parseMath2(), line);
    }
    return e;
  }

  ExprPtr parseMath2() {
    ExprPtr e = parsePow();
    while (peek().kind == Tok::Op &&
           (peek().text == "*" || peek().text == "/" || peek().text == "//" || peek().text == "%")) {
      const Token& t = next();
      std::string op = t.text;
      e = binary(op, std::move(e), parsePow(), t.line);
    }
    return e;
  }

  ExprPtr parsePow() {
    ExprPtr e = parseUnary(true);
    while (peek().kind == Tok::Op && peek().text == "**") {
      const int line = next().line;
      e = binary("**", std::move(e), parseUnary(true), line);
    }
    return e;
  }

  ExprPtr parseUnary(bool with_filter) {
    ExprPtr e;
    const Token& t = peek();
    if (t.kind == Tok::Op && (t.text == "-" || t.text == "+")) {
      const int line = t.line;
      const bool neg = t.text == "-";
      next();
      e = node(neg ? Expr::Kind::Neg : Expr::Kind::Pos, line);
      const Nest nest(nesting_, line);
      e->kids.push_back(parseUnary(false));
      e = sealed(std::move(e));
    } else {
      e = parsePrimary();
    }
    e = parsePostfix(std::move(e));
    if (with_filter) e = parseFilterExpr(std::move(e));
    return e;
  }

  ExprPtr parsePrimary() {
    const Token& t = next();
    switch (t.kind) {
      case Tok::Name: {
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto c = node(Expr::Kind::Const, t.line);
          c->value = Value::boolean(t.text == "true" || t.text == "True");
          return c;
        }
        if (t.text == "none" || t.text == "None") {
          auto c = node(Expr::Kind::Const, t.line);
          c->value = Value::none();
          return c;
        }
        auto n = node(Expr::Kind::Name, t.line);
        n->name = t.text;
        return n;
      }
      case Tok::String: {
        std::string s = t.text;
        while (peek().kind == Tok::String) s += next().text;
        auto c = node(Expr::Kind::Const, t.line);
        c->value = Value::string(std::move(s));
        return c;
      }
      case Tok::Int: {
        auto c = node(Expr::Kind::Const, t.line);
        c->value = Value::integer(t.ival);
        return c;
      }
      case Tok::Float: {
        auto c = node(Expr::Kind::Const, t.line);
        c->value = Value::real(t.fval);
        return c;
      }
      case Tok::Op:
        if (t.text == "(") {
          if (acceptOp(")")) return node(Expr::Kind::TupleLit, t.line);
          ExprPtr first = parseExpression(true);
          if (acceptOp(")")) return first;
          auto tup = node(Expr::Kind::TupleLit, t.line);
          tup->kids.push_back(std::move(first));
          while (acceptOp(",")) {
            if (peek().kind == Tok::Op && peek().text == ")") break;
            tup->kids.push_back(parseExpression(true));
          }
          expectOp(")");
          return sealed(std::move(tup));
        }
        if (t.text == "[") {
          auto l = node(Expr::Kind::ListLit, t.line);
          while (!acceptOp("]")) {
            if (!l->kids.empty()) expectOp(",");
            if (acceptOp("]")) break;
            l->kids.push_back(parseExpression(true));
          }
          return sealed(std::move(l));
        }
        if (t.text == "{") {
          auto d = node(Expr::Kind::DictLit, t.line);
          while (!acceptOp("}")) {
            if (!d->kids.empty()) expectOp(",");
            if (acceptOp("}")) break;
            d->kids.push_back(parseExpression(true));
            expectOp(":");
            d->kids.push_back(parseExpression(true));
          }
          return sealed(std::move(d));
        }
        [[fallthrough]];
      default:
        syntaxFail(t.line, t.kind == Tok::End ? std::string("an expression is missing before the end of the tag")
                                              : "unexpected " + describe(t) + " in an expression");
    }
  }

  // After '(': positional arguments, then name=value ones, up to ')'.
  void parseCallArgs(Expr& call) {
    bool keywords = false, any = false;
    while (!acceptOp(")")) {
      if (any) {
        expectOp(",");
        if (acceptOp(")")) break;
      }
      any = true;
      if (peek().kind == Tok::Op && (peek().text == "*" || peek().text == "**"))
        syntaxFail(peek().line, "*args and **kwargs in calls are not supported");
      if (peek().kind == Tok::Name && peek(1).kind == Tok::Op && peek(1).text == "=") {
        call.kw.push_back(next().text);
        next();
        keywords = true;
      } else if (keywords) {
        syntaxFail(peek().line, "a positional argument follows keyword arguments");
      }
      call.kids.push_back(parseExpression(true));
    }
  }

  ExprPtr parsePostfix(ExprPtr e) {
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::Op && t.text == ".") {
        next();
        const Token& n = next();
        if (n.kind == Tok::Name) {
          auto g = node(Expr::Kind::GetAttr, n.line);
          g->name = n.text;
          g->kids.push_back(std::move(e));
          e = sealed(std::move(g));
        } else if (n.kind == Tok::Int) {
          auto g = node(Expr::Kind::GetItem, n.line);
          auto c = node(Expr::Kind::Const, n.line);
          c->value = Value::integer(n.ival);
          g->kids.push_back(std::move(e));
          g->kids.push_back(std::move(c));
          e = sealed(std::move(g));
        } else {
          syntaxFail(n.line, "expected an attribute name after '.'");
        }
      } else if (t.kind == Tok::Op && t.text == "[") {
        const int line = next().line;
        ExprPtr parts[3];
        int colons = 0;
        for (;;) {
          if (peek().kind == Tok::Op && (peek().text == ":" || peek().text == "]")) {
            if (acceptOp("]")) break;
            next();
            if (++colons > 2) syntaxFail(line, "too many ':' in a subscript");
            continue;
          }
          if (parts[colons]) syntaxFail(line, "expected ':' or ']' in a subscript");
          parts[colons] = parseExpression(true);
        }
        if (colons == 0) {
          if (!parts[0]) syntaxFail(line, "empty subscript");
          auto g = node(Expr::Kind::GetItem, line);
          g->kids.push_back(std::move(e));
          g->kids.push_back(std::move(parts[0]));
          e = sealed(std::move(g));
        } else {
          auto sl = node(Expr::Kind::Slice, line);
          sl->kids.push_back(std::move(e));
          for (auto& p : parts) sl->kids.push_back(std::move(p));
          e = sealed(std::move(sl));
        }
      } else if (t.kind == Tok::Op && t.text == "(") {
        const int line = next().line;
        auto c = node(Expr::Kind::Call, line);
        c->kids.push_back(std::move(e));
        parseCallArgs(*c);
        e = sealed(std::move(c));
      } else {
        return e;
      }
    }
  }

  ExprPtr parseFilterExpr(ExprPtr e) {
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::Op && t.text == "|") {
        next();
        const Token& n = next();
        if (n.kind != Tok::Name) syntaxFail(n.line, "expected a filter name after '|'");
        auto f = node(Expr::Kind::Filter, n.line);
        f->name = n.text;
        f->impl = findFilter(n.text);
        if (!f->impl) syntaxFail(n.line, fmt::format("unsupported filter '{}'", n.text));
        f->kids.push_back(std::move(e));
        if (acceptOp("(")) parseCallArgs(*f);
        e = sealed(std::move(f));
      } else if (t.kind == Tok::Name && t.text == "is") {
        next();
        auto test = node(Expr::Kind::Test, t.line);
        test->negate = acceptName("not");
        const Token& n = next();
        if (n.kind != Tok::Name) syntaxFail(n.line, "expected a test name after 'is'");
        const std::string name = n.text;
        test->name = name;
        test->impl = findTest(name);
        if (!test->impl) syntaxFail(n.line, fmt::format("unsupported test '{}'", name));
        test->kids.push_back(std::move(e));
        const Token& a = peek();
        if (a.kind == Tok::Op && a.text == "(") {
          next();
          parseCallArgs(*test);
        } else if ((a.kind == Tok::Name || a.kind == Tok::String || a.kind == Tok::Int || a.kind == Tok::Float ||
                    (a.kind == Tok::Op && (a.text == "[" || a.text == "{"))) &&
                   !(a.kind == Tok::Name && (a.text == "else" || a.text == "or" || a.text == "and"))) {
          if (a.kind == Tok::Name && a.text == "is") syntaxFail(a.line, "tests cannot be chained with 'is'");
          test->kids.push_back(parsePostfix(parsePrimary()));
        }
        e = sealed(std::move(test));
      } else if (t.kind == Tok::Op && t.text == "(") {
        const int line = next().line;
        auto c = node(Expr::Kind::Call, line);
        c->kids.push_back(std::move(e));
        parseCallArgs(*c);
        e = sealed(std::move(c));
      } else {
        return e;
      }
    }
  }

  std::vector<Piece> pieces_;
  size_t pi_ = 0;
  const std::vector<Token>* toks_ = nullptr;
  size_t ti_ = 0;
  int line_ = 1;
  int loop_depth_ = 0;
  int nesting_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------------------

enum class Flow : uint8_t { Normal, Break, Continue };

struct Macro {
  const Stmt* def = nullptr;
};

struct Interp {
  std::vector<std::unordered_map<std::string, Value>> frames;
  std::string out;
  int depth = 0;                                 // macro call depth
  uint64_t steps = 0;                            // statements executed and loop iterations
  std::vector<std::shared_ptr<Map>> namespaces;  // emptied when done: `set ns.x = ns` makes a cycle, and a
                                                 // chain of namespaces would be freed recursively
  Interp() = default;
  Interp(const Interp&) = delete;
  Interp& operator=(const Interp&) = delete;
  ~Interp() {
    for (auto& n : namespaces) n->items.clear();
  }

  Value lookup(const std::string& name) const {
    for (auto it = frames.rbegin(); it != frames.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }
  void assign(const std::string& name, Value v) { frames.back()[name] = std::move(v); }

  Value eval(const Expr& e);
  Flow exec(const Body& body);
  void execStmt(const Stmt& s, Flow& flow);
  Value callValue(const Value& callee, Args& args);
  Value makeMacro(const Stmt& def);
};

// Argument access for builtins: positional index `k` or keyword `name`.
const Value* arg(Args& a, size_t k, std::string_view name) {
  for (auto& [n, v] : a.kw)
    if (n == name) return &v;
  return k < a.pos.size() ? &a.pos[k] : nullptr;
}

std::optional<std::string> optString(Args& a, size_t k, std::string_view name, std::string_view what) {
  const Value* v = arg(a, k, name);
  if (!v || v->kind == Value::Kind::None) return std::nullopt;
  if (v->kind != Value::Kind::String) evalFail(fmt::format("{}: argument '{}' must be a string", what, name));
  return v->s;
}

int64_t optInt(Args& a, size_t k, std::string_view name, int64_t def, std::string_view what) {
  const Value* v = arg(a, k, name);
  if (!v || v->kind == Value::Kind::None) return def;
  if (!isIntLike(*v)) evalFail(fmt::format("{}: argument '{}' must be an integer", what, name));
  return asInt(*v);
}

// obj.name: Python attributes (methods of str and dict) first, then the item (jinja2's getattr).
Value getMethod(const Value& obj, const std::string& name);

Value getAttr(const Value& obj, const std::string& name) {
  if (obj.isUndefined()) failUndefined(obj);
  if (Value m = getMethod(obj, name); !m.isUndefined()) return m;
  if (obj.kind == Value::Kind::Dict || obj.kind == Value::Kind::Namespace) {
    if (const Value* v = obj.dict->find(name)) return *v;
  }
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", typeName(obj), name));
}

std::optional<size_t> normIndex(int64_t k, size_t n) {
  if (k < 0) k += static_cast<int64_t>(n);
  if (k < 0 || k >= static_cast<int64_t>(n)) return std::nullopt;
  return static_cast<size_t>(k);
}

// obj[key]: the item first, then (for a string key) the attribute (jinja2's getitem).
Value getItem(const Value& obj, const Value& key) {
  if (obj.isUndefined()) failUndefined(obj);
  if (obj.kind == Value::Kind::List && isIntLike(key)) {
    if (auto k = normIndex(asInt(key), obj.list->size())) return (*obj.list)[*k];
    return Value::undefined(fmt::format("list object has no element {}", asInt(key)));
  }
  if (obj.kind == Value::Kind::String && isIntLike(key)) {
    const auto cps = codepoints(obj.s);
    if (auto k = normIndex(asInt(key), cps.size())) return Value::string(obj.s.substr(cps[*k].first, cps[*k].second));
    return Value::undefined(fmt::format("str object has no element {}", asInt(key)));
  }
  if (obj.kind == Value::Kind::Dict && key.kind == Value::Kind::String) {
    if (const Value* v = obj.dict->find(key.s)) return *v;
  }
  if (key.kind == Value::Kind::String) {
    if (Value m = getMethod(obj, key.s); !m.isUndefined()) return m;
    if (obj.kind == Value::Kind::Namespace)
      if (const Value* v = obj.dict->find(key.s)) return *v;
    return Value::undefined(fmt::format("'{} object' has no attribute '{}'", typeName(obj), key.s));
  }
  return Value::undefined(fmt::format("'{} object' has no element {}", typeName(obj), repr(key)));
}

// Python slice semantics on lists and strings.
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.isUndefined()) failUndefined(obj);
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.isUndefined() || v.kind == Value::Kind::None) return std::nullopt;
    if (!isIntLike(v)) evalFail(fmt::format("slice {} must be an integer or None, not {}", what, typeName(v)));
    return asInt(v);
  };
  const int64_t st = bound(step, "step").value_or(1);
  if (st == 0) evalFail("slice step cannot be zero");
  std::vector<std::pair<size_t, size_t>> cps;
  size_t n = 0;
  if (obj.kind == Value::Kind::List) {
    n = obj.list->size();
  } else if (obj.kind == Value::Kind::String) {
    cps = codepoints(obj.s);
    n = cps.size();
  } else {
    return Value::undefined(fmt::format("'{} object' cannot be sliced", typeName(obj)));
  }
  const auto len = static_cast<int64_t>(n);
  auto clamp = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) x += len;
    if (st > 0) return std::clamp<int64_t>(x, 0, len);
    return std::clamp<int64_t>(x, -1, len - 1);
  };
  const int64_t b = clamp(bound(start, "start"), st > 0 ? 0 : len - 1);
  const int64_t e = clamp(bound(stop, "stop"), st > 0 ? len : -1);
  std::vector<size_t> idx;
  for (int64_t k = b; st > 0 ? k < e : k > e;) {
    idx.push_back(static_cast<size_t>(k));
    if (__builtin_add_overflow(k, st, &k)) break;  // past either end
  }
  if (obj.kind == Value::Kind::List) {
    Items r;
    for (size_t k : idx) r.push_back((*obj.list)[k]);
    return Value::makeList(std::move(r), obj.tuple);
  }
  std::string r;
  for (size_t k : idx) r.append(obj.s, cps[k].first, cps[k].second);
  return Value::string(std::move(r));
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string r = toStr(a) + toStr(b);
    if (r.size() > kMaxBytes) evalFail(fmt::format("a string exceeds {} MiB", kMaxBytes >> 20));
    return Value::string(std::move(r));
  }
  if (a.isUndefined()) failUndefined(a);
  if (b.isUndefined()) failUndefined(b);
  auto unsupported = [&]() -> Value {
    if (op == "+" && a.kind == Value::Kind::String)
      evalFail(fmt::format("can only concatenate str (not \"{}\") to str", typeName(b)));
    if (op == "+" && a.kind == Value::Kind::List)
      evalFail(fmt::format("can only concatenate list (not \"{}\") to list", typeName(b)));
    evalFail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, typeName(a), typeName(b)));
  };
  if (a.isNumber() && b.isNumber()) {
    const bool ints = isIntLike(a) && isIntLike(b);
    if (ints) {
      const int64_t x = asInt(a), y = asInt(b);
      int64_t r = 0;
      if (op == "+") {
        if (__builtin_add_overflow(x, y, &r)) evalFail("integer overflow");
        return Value::integer(r);
      }
      if (op == "-") {
        if (__builtin_sub_overflow(x, y, &r)) evalFail("integer overflow");
        return Value::integer(r);
      }
      if (op == "*") {
        if (__builtin_mul_overflow(x, y, &r)) evalFail("integer overflow");
        return Value::integer(r);
      }
      if (op == "/") {
        if (y == 0) evalFail("division by zero");
        return Value::real(static_cast<double>(x) / static_cast<double>(y));
      }
      if (op == "//" || op == "%") {
        if (y == 0) evalFail("integer division or modulo by zero");
        if (y == -1) {  // INT64_MIN / -1 traps
          if (op == "%") return Value::integer(0);
          if (x == std::numeric_limits<int64_t>::min()) evalFail("integer overflow");
          return Value::integer(-x);
        }
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        return Value::integer(op == "//" ? q : m);
      }
      if (op == "**") {
        if (y < 0) return Value::real(std::pow(static_cast<double>(x), static_cast<double>(y)));
        int64_t p = 1, base = x;  // by squaring: y may be huge when x is 0 or +-1
        for (int64_t e = y; e > 0; e >>= 1) {
          if ((e & 1) && __builtin_mul_overflow(p, base, &p)) evalFail("integer overflow");
          if (e > 1 && __builtin_mul_overflow(base, base, &base)) evalFail("integer overflow");
        }
        return Value::integer(p);
      }
    }
    const double x = asDouble(a), y = asDouble(b);
    if (op == "+") return Value::real(x + y);
    if (op == "-") return Value::real(x - y);
    if (op == "*") return Value::real(x * y);
    if (op == "/") {
      if (y == 0) evalFail("float division by zero");
      return Value::real(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) evalFail("float modulo");
      // CPython's float_divmod.
      double m = std::fmod(x, y);
      double div = (x - m) / y;
      if (m != 0 && ((y < 0) != (m < 0))) {
        m += y;
        div -= 1.0;
      }
      if (op == "%") return Value::real(m);
      double fl = std::floor(div);
      if (div - fl > 0.5) fl += 1.0;
      return Value::real(fl);
    }
    if (op == "**") return Value::real(std::pow(x, y));
  }
  if (op == "+" && a.kind == Value::Kind::String && b.kind == Value::Kind::String) {
    if (a.s.size() + b.s.size() > kMaxBytes) evalFail(fmt::format("a string exceeds {} MiB", kMaxBytes >> 20));
    return Value::string(a.s + b.s);
  }
  if (op == "+" && a.kind == Value::Kind::List && b.kind == Value::Kind::List) {
    Items r = *a.list;
    r.insert(r.end(), b.list->begin(), b.list->end());
    return Value::makeList(std::move(r), a.tuple && b.tuple);
  }
  if (op == "*" && ((a.kind == Value::Kind::String || a.kind == Value::Kind::List) && isIntLike(b))) {
    const int64_t n = std::max<int64_t>(0, asInt(b));
    const size_t unit = a.kind == Value::Kind::String ? a.s.size() : a.list->size() * sizeof(Value);
    if (n > 0 && unit > 0 && static_cast<uint64_t>(n) > kMaxBytes / unit)
      evalFail(fmt::format("repetition result exceeds {} MiB", kMaxBytes >> 20));
    if (a.kind == Value::Kind::String) {
      std::string r;
      for (int64_t k = 0; k < n; ++k) r += a.s;
      return Value::string(std::move(r));
    }
    Items r;
    for (int64_t k = 0; k < n; ++k) r.insert(r.end(), a.list->begin(), a.list->end());
    return Value::makeList(std::move(r), a.tuple);
  }
  if (op == "*" && isIntLike(a) && (b.kind == Value::Kind::String || b.kind == Value::Kind::List))
    return arith(op, b, a);
  if (op == "%" && a.kind == Value::Kind::String) evalFail("'%' string formatting is not supported");
  return unsupported();
}

Value Interp::eval(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::Const:
      return e.value;
    case Expr::Kind::Name:
      return lookup(e.name);
    case Expr::Kind::GetAttr:
      return getAttr(eval(*e.kids[0]), e.name);
    case Expr::Kind::GetItem: {
      Value obj = eval(*e.kids[0]);
      return getItem(obj, eval(*e.kids[1]));
    }
    case Expr::Kind::Slice: {
      Value obj = eval(*e.kids[0]);
      auto part = [&](size_t k) { return e.kids[k] ? eval(*e.kids[k]) : Value::none(); };
      return slice(obj, part(1), part(2), part(3));
    }
    case Expr::Kind::Call:
    case Expr::Kind::Filter:
    case Expr::Kind::Test: {
      Value first = eval(*e.kids[0]);
      Args a;
      const size_t nkw = e.kw.size();
      const size_t npos = e.kids.size() - 1 - nkw;
      for (size_t k = 0; k < npos; ++k) a.pos.push_back(eval(*e.kids[1 + k]));
      for (size_t k = 0; k < nkw; ++k) a.kw.emplace_back(e.kw[k], eval(*e.kids[1 + npos + k]));
      if (e.kind == Expr::Kind::Call) return callValue(first, a);
      Value r = e.impl(*this, first, a);
      if (e.kind == Expr::Kind::Test && e.negate) return Value::boolean(!r.b);
      return r;
    }
    case Expr::Kind::Neg:
    case Expr::Kind::Pos: {
      Value v = eval(*e.kids[0]);
      if (v.isUndefined()) failUndefined(v);
      if (!v.isNumber())
        evalFail(
            fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Kind::Neg ? '-' : '+', typeName(v)));
      if (e.kind == Expr::Kind::Pos) return v.kind == Value::Kind::Bool ? Value::integer(asInt(v)) : v;
      if (v.kind == Value::Kind::Float) return Value::real(-v.f);
      if (asInt(v) == std::numeric_limits<int64_t>::min()) evalFail("integer overflow");
      return Value::integer(-asInt(v));
    }
    case Expr::Kind::Binary: {
      Value a = eval(*e.kids[0]);
      return arith(e.name, a, eval(*e.kids[1]));
    }
    case Expr::Kind::Compare: {
      Value left = eval(*e.kids[0]);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.kids[k + 1]);
        const std::string& op = e.ops[k];
        bool ok;
        if (op == "==")
          ok = equals(left, right);
        else if (op == "!=")
          ok = !equals(left, right);
        else if (op == "in")
          ok = contains(right, left);
        else if (op == "notin")
          ok = !contains(right, left);
        else {
          const int c = compare(left, right, op);
          ok = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
        }
        if (!ok) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case Expr::Kind::And: {
      Value a = eval(*e.kids[0]);
      return truthy(a) ? eval(*e.kids[1]) : a;
    }
    case Expr::Kind::Or: {
      Value a = eval(*e.kids[0]);
      return truthy(a) ? a : eval(*e.kids[1]);
    }
    case Expr::Kind::Not:
      return Value::boolean(!truthy(eval(*e.kids[0])));
    case Expr::Kind::Cond: {
      if (truthy(eval(*e.kids[0]))) return eval(*e.kids[1]);
      if (e.kids[2]) return eval(*e.kids[2]);
      return Value::undefined("the conditional expression has no else branch");
    }
    case Expr::Kind::ListLit:
    case Expr::Kind::TupleLit: {
      Items items;
      for (const auto& k : e.kids) items.push_back(eval(*k));
      return Value::makeList(std::move(items), e.kind == Expr::Kind::TupleLit);
    }
    case Expr::Kind::DictLit: {
      auto d = std::make_shared<Map>();
      for (size_t k = 0; k + 1 < e.kids.size(); k += 2) {
        Value key = eval(*e.kids[k]);
        if (key.kind != Value::Kind::String) evalFail("dict keys other than strings are not supported");
        d->set(key.s, eval(*e.kids[k + 1]));
      }
      return Value::makeDict(std::move(d));
    }
  }
  return {};
}

Value Interp::callValue(const Value& callee, Args& args) {
  if (callee.isUndefined()) failUndefined(callee);
  if (callee.kind != Value::Kind::Function) evalFail(fmt::format("'{}' object is not callable", typeName(callee)));
  return callee.fn->call(*this, args);
}

Value Interp::makeMacro(const Stmt& def) {
  const Stmt* d = &def;
  return makeFunction(def.targets[0], [d](Interp& in, Args& a) -> Value {
    if (in.depth > 64) evalFail("macros nested too deeply");
    if (a.pos.size() > d->params.size())
      evalFail(fmt::format("macro '{}' takes {} arguments", d->targets[0], d->params.size()));
    std::unordered_map<std::string, Value> frame;
    for (size_t k = 0; k < d->params.size(); ++k) {
      const Value* v = arg(a, k, d->params[k]);
      if (v)
        frame[d->params[k]] = *v;
      else if (d->defaults[k])
        frame[d->params[k]] = in.eval(*d->defaults[k]);
      else
        frame[d->params[k]] = Value::undefined(fmt::format("'{}' is undefined", d->params[k]));
    }
    for (auto& [n, v] : a.kw)
      if (std::find(d->params.begin(), d->params.end(), n) == d->params.end())
        evalFail(fmt::format("macro '{}' takes no keyword argument '{}'", d->targets[0], n));
    std::string saved;
    std::swap(saved, in.out);
    // A macro sees the template's globals and its own arguments, not the caller's loop variables.
    auto saved_frames = std::move(in.frames);
    in.frames.clear();
    in.frames.push_back(saved_frames[0]);
    if (saved_frames.size() > 1) in.frames.push_back(saved_frames[1]);
    in.frames.push_back(std::move(frame));
    ++in.depth;
    try {
      in.exec(d->bodies[0]);
    } catch (...) {
      --in.depth;
      in.frames = std::move(saved_frames);
      std::swap(saved, in.out);
      throw;
    }
    --in.depth;
    in.frames = std::move(saved_frames);
    std::swap(saved, in.out);
    return Value::string(std::move(saved));
  });
}

Flow Interp::exec(const Body& body) {
  for (const auto& s : body) {
    Flow flow = Flow::Normal;
    try {
      if (++steps > kMaxSteps) evalFail(fmt::format("gave up after {} steps (a runaway loop?)", kMaxSteps));
      execStmt(*s, flow);
      if (out.size() > kMaxBytes) evalFail(fmt::format("the rendering exceeds {} MiB", kMaxBytes >> 20));
    } catch (const EvalError& err) {
      throw InvalidArgument(fmt::format("chat template, line {}: {}", s->line, err.message));
    }
    if (flow != Flow::Normal) return flow;
  }
  return Flow::Normal;
}

void Interp::execStmt(const Stmt& s, Flow& flow) {
  switch (s.kind) {
    case Stmt::Kind::Text:
      out += s.text;
      return;
    case Stmt::Kind::Output:
      out += toStr(eval(*s.expr));
      return;
    case Stmt::Kind::If:
      for (size_t k = 0; k < s.conds.size(); ++k) {
        if (truthy(eval(*s.conds[k]))) {
          flow = exec(s.bodies[k]);
          return;
        }
      }
      if (s.has_else) flow = exec(s.bodies.back());
      return;
    case Stmt::Kind::For: {
      const Items all = iterate(eval(*s.expr));
      auto bind = [&](const Value& item) {
        if (s.targets.size() == 1) {
          assign(s.targets[0], item);
          return;
        }
        const Items parts = iterate(item);
        if (parts.size() != s.targets.size())
          evalFail(fmt::format("cannot unpack {} values into {} loop variables", parts.size(), s.targets.size()));
        for (size_t k = 0; k < parts.size(); ++k) assign(s.targets[k], parts[k]);
      };
      Items items;
      if (s.filter) {
        for (const auto& item : all) {
          frames.emplace_back();
          bind(item);
          const bool keep = truthy(eval(*s.filter));
          frames.pop_back();
          if (keep) items.push_back(item);
        }
      } else {
        items = all;
      }
      if (items.empty()) {
        if (s.has_else) {
          frames.emplace_back();
          exec(s.bodies[1]);
          frames.pop_back();
        }
        return;
      }
      const auto n = static_cast<int64_t>(items.size());
      auto cycle = makeFunction("loop.cycle", [](Interp& in, Args& a) -> Value {
        if (a.pos.empty()) evalFail("loop.cycle() needs at least one argument");
        const Value loop = in.lookup("loop");
        const int64_t idx = loop.kind == Value::Kind::Dict ? asInt(*loop.dict->find("index0")) : 0;
        return a.pos[static_cast<size_t>(idx % static_cast<int64_t>(a.pos.size()))];
      });
      for (int64_t k = 0; k < n; ++k) {
        if (++steps > kMaxSteps) evalFail(fmt::format("gave up after {} steps (a runaway loop?)", kMaxSteps));
        const auto uk = static_cast<size_t>(k);
        auto loop = std::make_shared<Map>();
        loop->items = {{"index", Value::integer(k + 1)},
                       {"index0", Value::integer(k)},
                       {"revindex", Value::integer(n - k)},
                       {"revindex0", Value::integer(n - k - 1)},
                       {"first", Value::boolean(k == 0)},
                       {"last", Value::boolean(k == n - 1)},
                       {"length", Value::integer(n)},
                       {"depth", Value::integer(1)},
                       {"depth0", Value::integer(0)},
                       {"previtem", k > 0 ? items[uk - 1] : Value::undefined("there is no previous item")},
                       {"nextitem", k + 1 < n ? items[uk + 1] : Value::undefined("there is no next item")},
                       {"cycle", cycle}};
        frames.emplace_back();
        bind(items[uk]);
        assign("loop", Value::makeDict(std::move(loop)));
        Flow f;
        try {
          f = exec(s.bodies[0]);
        } catch (...) {
          frames.pop_back();
          throw;
        }
        frames.pop_back();
        if (f == Flow::Break) break;
      }
      return;
    }
    case Stmt::Kind::Set: {
      Value v = eval(*s.expr);
      if (s.attr_target) {
        Value ns = lookup(s.targets[0]);
        if (ns.kind != Value::Kind::Namespace)
          evalFail(fmt::format("cannot assign attribute on non-namespace object '{}'", s.targets[0]));
        ns.dict->set(s.targets[1], std::move(v));
      } else if (s.targets.size() == 1) {
        assign(s.targets[0], std::move(v));
      } else {
        const Items parts = iterate(v);
        if (parts.size() != s.targets.size())
          evalFail(fmt::format("cannot unpack {} values into {} variables", parts.size(), s.targets.size()));
        for (size_t k = 0; k < parts.size(); ++k) assign(s.targets[k], parts[k]);
      }
      return;
    }
    case Stmt::Kind::SetBlock: {
      std::string saved;
      std::swap(saved, out);
      exec(s.bodies[0]);
      std::swap(saved, out);
      assign(s.targets[0], Value::string(std::move(saved)));
      return;
    }
    case Stmt::Kind::Break:
      flow = Flow::Break;
      return;
    case Stmt::Kind::Continue:
      flow = Flow::Continue;
      return;
    case Stmt::Kind::Macro:
      assign(s.targets[0], makeMacro(s));
      return;
    case Stmt::Kind::Generation:
      flow = exec(s.bodies[0]);
      return;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------------------------

Value applyTest(Interp& in, std::string_view name, const Value& v, Args& a);
Value applyFilterByName(Interp& in, std::string_view name, const Value& v, Args& a);

// An attribute path "a.b" of an item (selectattr, map, join(attribute=...)).
Value attrPath(const Value& item, const std::string& path) {
  Value cur = item;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    Value key = Value::string(part);
    if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      int64_t k = 0;
      if (std::from_chars(part.data(), part.data() + part.size(), k).ec == std::errc()) key = Value::integer(k);
    }
    cur = cur.isUndefined() ? cur : getItem(cur, key);
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

Value fTrim(Interp&, const Value& v, Args& a) {
  return Value::string(pyStrip(toStr(v), optString(a, 0, "chars", "trim"), true, true));
}
Value fLength(Interp&, const Value& v, Args&) { return Value::integer(static_cast<int64_t>(length(v))); }
Value fUpper(Interp&, const Value& v, Args&) { return Value::string(asciiMap(toStr(v), toUpperAscii)); }
Value fLower(Interp&, const Value& v, Args&) { return Value::string(asciiMap(toStr(v), toLowerAscii)); }
Value fCapitalize(Interp&, const Value& v, Args&) { return Value::string(pyCapitalize(toStr(v))); }
Value fTitle(Interp&, const Value& v, Args&) { return Value::string(jinjaTitle(toStr(v))); }
Value fString(Interp&, const Value& v, Args&) { return v.kind == Value::Kind::String ? v : Value::string(toStr(v)); }
Value fSafe(Interp&, const Value& v, Args&) { return v; }

Value fDefault(Interp&, const Value& v, Args& a) {
  const Value* d = arg(a, 0, "default_value");
  const Value* b = arg(a, 1, "boolean");
  const bool boolean = b && truthy(*b);
  if (v.isUndefined() || (boolean && !truthy(v))) return d ? *d : Value::string("");
  return v;
}

Value fFirst(Interp&, const Value& v, Args&) {
  const Items items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}
Value fLast(Interp&, const Value& v, Args&) {
  const Items items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value fJoin(Interp&, const Value& v, Args& a) {
  const std::string sep = optString(a, 0, "d", "join").value_or("");
  const auto attribute = optString(a, 1, "attribute", "join");
  std::string r;
  bool first = true;
  for (const auto& item : iterate(v)) {
    if (!first) r += sep;
    first = false;
    r += toStr(attribute ? attrPath(item, *attribute) : item);
  }
  return Value::string(std::move(r));
}

Value fReplace(Interp&, const Value& v, Args& a) {
  const Value* o = arg(a, 0, "old");
  const Value* n = arg(a, 1, "new");
  if (!o || !n) evalFail("replace needs the old and new strings");
  return Value::string(pyReplace(toStr(v), toStr(*o), toStr(*n), optInt(a, 2, "count", -1, "replace")));
}

// int(x) of a finite float (toward zero); Python's ints are unbounded, ours are 64-bit.
int64_t floatToInt(double f) {
  const double t = std::trunc(f);
  if (!(t >= -9223372036854775808.0 && t < 9223372036854775808.0)) evalFail("integer overflow");
  return static_cast<int64_t>(t);
}

Value fInt(Interp&, const Value& v, Args& a) {
  const Value* d = arg(a, 0, "default");
  const Value def = d ? *d : Value::integer(0);
  switch (v.kind) {
    case Value::Kind::Int:
      return v;
    case Value::Kind::Bool:
      return Value::integer(asInt(v));
    case Value::Kind::Float:
      if (!std::isfinite(v.f)) return def;
      return Value::integer(floatToInt(v.f));
    case Value::Kind::String: {
      const std::string s = stripNumber(v.s);
      int64_t x = 0;
      const char* b = s.data() + (!s.empty() && s[0] == '+' ? 1 : 0);
      auto r = std::from_chars(b, s.data() + s.size(), x);
      if (!s.empty() && r.ec == std::errc() && r.ptr == s.data() + s.size()) return Value::integer(x);
      char* end = nullptr;
      const double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(f)) return Value::integer(floatToInt(f));
      return def;
    }
    default:
      return def;
  }
}

Value fFloat(Interp&, const Value& v, Args& a) {
  const Value* d = arg(a, 0, "default");
  const Value def = d ? *d : Value::real(0.0);
  if (v.isNumber()) return Value::real(asDouble(v));
  if (v.kind == Value::Kind::String) {
    const std::string s = stripNumber(v.s);
    char* end = nullptr;
    const double f = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) return Value::real(f);
  }
  return def;
}

Value fList(Interp&, const Value& v, Args&) { return Value::makeList(iterate(v)); }

Value fTojson(Interp&, const Value& v, Args& a) {
  // HF's signature: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  JsonOptions o;
  if (const Value* e = arg(a, 0, "ensure_ascii")) o.ensure_ascii = truthy(*e);
  if (const Value* ind = arg(a, 1, "indent"); ind && ind->kind != Value::Kind::None) {
    if (isIntLike(*ind))
      o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, asInt(*ind))), ' ');
    else if (ind->kind == Value::Kind::String)
      o.indent = ind->s;
    else
      evalFail("tojson: indent must be an integer or a string");
    o.item_sep = ",";
  }
  if (const Value* sep = arg(a, 2, "separators"); sep && sep->kind != Value::Kind::None) {
    if (sep->kind != Value::Kind::List || sep->list->size() != 2 || (*sep->list)[0].kind != Value::Kind::String ||
        (*sep->list)[1].kind != Value::Kind::String)
      evalFail("tojson: separators must be a pair of strings");
    o.item_sep = (*sep->list)[0].s;
    o.key_sep = (*sep->list)[1].s;
  }
  if (const Value* sk = arg(a, 3, "sort_keys")) o.sort_keys = truthy(*sk);
  std::string out;
  toJson(out, v, o, 0);
  return Value::string(std::move(out));
}

Value fItems(Interp&, const Value& v, Args&) {
  if (v.isUndefined()) return Value::makeList({});
  if (v.kind != Value::Kind::Dict) evalFail(fmt::format("can only get item pairs from a mapping, not {}", typeName(v)));
  Items r;
  for (const auto& [k, x] : v.dict->items) r.push_back(Value::makeList({Value::string(k), x}, true));
  return Value::makeList(std::move(r));
}

Value selectImpl(Interp& in, const Value& v, Args& a, bool attr, bool keep) {
  size_t k = 0;
  std::string path;
  if (attr) {
    if (a.pos.empty() || a.pos[0].kind != Value::Kind::String) evalFail("selectattr/rejectattr need an attribute name");
    path = a.pos[0].s;
    k = 1;
  }
  std::string test;
  Args targs;
  if (k < a.pos.size()) {
    if (a.pos[k].kind != Value::Kind::String) evalFail("the test of select/reject must be named by a string");
    test = a.pos[k].s;
    targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(k + 1), a.pos.end());
  }
  targs.kw = a.kw;
  Items r;
  for (const auto& item : iterate(v)) {
    const Value x = attr ? attrPath(item, path) : item;
    Args call = targs;
    const bool ok = test.empty() ? truthy(x) : truthy(applyTest(in, test, x, call));
    if (ok == keep) r.push_back(item);
  }
  return Value::makeList(std::move(r));
}
Value fSelect(Interp& in, const Value& v, Args& a) { return selectImpl(in, v, a, false, true); }
Value fReject(Interp& in, const Value& v, Args& a) { return selectImpl(in, v, a, false, false); }
Value fSelectattr(Interp& in, const Value& v, Args& a) { return selectImpl(in, v, a, true, true); }
Value fRejectattr(Interp& in, const Value& v, Args& a) { return selectImpl(in, v, a, true, false); }

Value fMap(Interp& in, const Value& v, Args& a) {
  Items r;
  if (const Value* at = arg(a, 99, "attribute")) {
    if (at->kind != Value::Kind::String) evalFail("map: attribute must be a string");
    const Value* d = arg(a, 99, "default");
    for (const auto& item : iterate(v)) {
      Value x = attrPath(item, at->s);
      r.push_back(x.isUndefined() && d ? *d : x);
    }
    return Value::makeList(std::move(r));
  }
  if (a.pos.empty() || a.pos[0].kind != Value::Kind::String) evalFail("map needs a filter name or attribute=");
  const std::string name = a.pos[0].s;
  Args fargs;
  fargs.pos.assign(a.pos.begin() + 1, a.pos.end());
  fargs.kw = a.kw;
  for (const auto& item : iterate(v)) {
    Args call = fargs;
    r.push_back(applyFilterByName(in, name, item, call));
  }
  return Value::makeList(std::move(r));
}

Value fReverse(Interp&, const Value& v, Args&) {
  if (v.kind == Value::Kind::String) {
    std::string r;
    const auto cps = codepoints(v.s);
    for (auto it = cps.rbegin(); it != cps.rend(); ++it) r.append(v.s, it->first, it->second);
    return Value::string(std::move(r));
  }
  Items items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::makeList(std::move(items));
}

Value fAbs(Interp&, const Value& v, Args&) {
  if (v.kind == Value::Kind::Float) return Value::real(std::fabs(v.f));
  if (isIntLike(v)) {
    if (asInt(v) == std::numeric_limits<int64_t>::min()) evalFail("integer overflow");
    return Value::integer(asInt(v) < 0 ? -asInt(v) : asInt(v));
  }
  evalFail(fmt::format("bad operand type for abs(): '{}'", typeName(v)));
}

Value fUnique(Interp&, const Value& v, Args& a) {
  // jinja2 compares strings case-insensitively by default (ASCII case folding here).
  const Value* cs = arg(a, 0, "case_sensitive");
  const bool sensitive = cs && truthy(*cs);
  const auto attribute = optString(a, 1, "attribute", "unique");
  Items r;
  std::vector<Value> seen;
  for (const auto& item : iterate(v)) {
    Value key = attribute ? attrPath(item, *attribute) : item;
    if (!sensitive && key.kind == Value::Kind::String) key = Value::string(asciiMap(key.s, toLowerAscii));
    bool dup = false;
    for (const auto& s : seen) dup = dup || equals(s, key);
    if (!dup) {
      seen.push_back(key);
      r.push_back(item);
    }
  }
  return Value::makeList(std::move(r));
}

struct NamedImpl {
  std::string_view name;
  Expr::Impl impl;
};

constexpr NamedImpl kFilters[] = {
    {"abs", fAbs},
    {"capitalize", fCapitalize},
    {"count", fLength},
    {"d", fDefault},
    {"default", fDefault},
    {"first", fFirst},
    {"float", fFloat},
    {"int", fInt},
    {"items", fItems},
    {"join", fJoin},
    {"last", fLast},
    {"length", fLength},
    {"list", fList},
    {"lower", fLower},
    {"map", fMap},
    {"reject", fReject},
    {"rejectattr", fRejectattr},
    {"replace", fReplace},
    {"reverse", fReverse},
    {"safe", fSafe},
    {"select", fSelect},
    {"selectattr", fSelectattr},
    {"string", fString},
    {"title", fTitle},
    {"tojson", fTojson},
    {"trim", fTrim},
    {"unique", fUnique},
    {"upper", fUpper},
};

Expr::Impl findFilter(std::string_view name) {
  for (const auto& f : kFilters)
    if (f.name == name) return f.impl;
  return nullptr;
}

Value applyFilterByName(Interp& in, std::string_view name, const Value& v, Args& a) {
  const Expr::Impl f = findFilter(name);
  if (!f) evalFail(fmt::format("unsupported filter '{}'", name));
  return f(in, v, a);
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

const Value& testArg(Args& a, std::string_view test) {
  if (a.pos.empty()) evalFail(fmt::format("test '{}' needs an argument", test));
  return a.pos[0];
}

Value tDefined(Interp&, const Value& v, Args&) { return Value::boolean(!v.isUndefined()); }
Value tUndefined(Interp&, const Value& v, Args&) { return Value::boolean(v.isUndefined()); }
Value tNone(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::None); }
Value tBoolean(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Bool); }
Value tTrue(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Bool && v.b); }
Value tFalse(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Bool && !v.b); }
Value tInteger(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Int); }
Value tFloat(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Float); }
Value tNumber(Interp&, const Value& v, Args&) { return Value::boolean(v.isNumber()); }
Value tString(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::String); }
Value tMapping(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Dict); }
Value tIterable(Interp&, const Value& v, Args&) {
  return Value::boolean(v.kind == Value::Kind::String || v.kind == Value::Kind::List || v.kind == Value::Kind::Dict ||
                        v.isUndefined());
}
Value tSequence(Interp&, const Value& v, Args&) {
  return Value::boolean(v.kind == Value::Kind::String || v.kind == Value::Kind::List || v.kind == Value::Kind::Dict ||
                        v.isUndefined());
}
Value tCallable(Interp&, const Value& v, Args&) { return Value::boolean(v.kind == Value::Kind::Function); }
Value tSameas(Interp&, const Value& v, Args& a) {
  const Value& o = testArg(a, "sameas");
  if (v.kind != o.kind) return Value::boolean(false);
  switch (v.kind) {
    case Value::Kind::None:
    case Value::Kind::Undefined:
      return Value::boolean(true);
    case Value::Kind::Bool:
      return Value::boolean(v.b == o.b);
    case Value::Kind::List:
      return Value::boolean(v.list == o.list);
    case Value::Kind::Dict:
    case Value::Kind::Namespace:
      return Value::boolean(v.dict == o.dict);
    case Value::Kind::Function:
      return Value::boolean(v.fn == o.fn);
    default:
      return Value::boolean(equals(v, o));  // Python interns small ints and short strings
  }
}
Value tEq(Interp&, const Value& v, Args& a) { return Value::boolean(equals(v, testArg(a, "eq"))); }
Value tNe(Interp&, const Value& v, Args& a) { return Value::boolean(!equals(v, testArg(a, "ne"))); }
Value tLt(Interp&, const Value& v, Args& a) { return Value::boolean(compare(v, testArg(a, "lt"), "<") < 0); }
Value tLe(Interp&, const Value& v, Args& a) { return Value::boolean(compare(v, testArg(a, "le"), "<=") <= 0); }
Value tGt(Interp&, const Value& v, Args& a) { return Value::boolean(compare(v, testArg(a, "gt"), ">") > 0); }
Value tGe(Interp&, const Value& v, Args& a) { return Value::boolean(compare(v, testArg(a, "ge"), ">=") >= 0); }
Value tIn(Interp&, const Value& v, Args& a) { return Value::boolean(contains(testArg(a, "in"), v)); }
int64_t intForTest(const Value& v, std::string_view test) {
  if (v.isUndefined()) failUndefined(v);
  if (!isIntLike(v)) evalFail(fmt::format("test '{}' needs an integer, not {}", test, typeName(v)));
  return asInt(v);
}
Value tOdd(Interp&, const Value& v, Args&) { return Value::boolean(intForTest(v, "odd") % 2 != 0); }
Value tEven(Interp&, const Value& v, Args&) { return Value::boolean(intForTest(v, "even") % 2 == 0); }
Value tDivisibleby(Interp&, const Value& v, Args& a) {
  const int64_t d = intForTest(testArg(a, "divisibleby"), "divisibleby");
  if (d == 0) evalFail("integer division or modulo by zero");
  const int64_t x = intForTest(v, "divisibleby");
  return Value::boolean(d == -1 || x % d == 0);
}
// Python's str.islower/isupper on ASCII: some cased letter, and none of the other case.
Value caseTest(const Value& v, bool lower) {
  const std::string s = toStr(v);
  bool cased = false;
  for (char c : s) {
    if (c >= 'a' && c <= 'z') {
      if (!lower) return Value::boolean(false);
      cased = true;
    } else if (c >= 'A' && c <= 'Z') {
      if (lower) return Value::boolean(false);
      cased = true;
    }
  }
  return Value::boolean(cased);
}
Value tLower(Interp&, const Value& v, Args&) { return caseTest(v, true); }
Value tUpper(Interp&, const Value& v, Args&) { return caseTest(v, false); }

constexpr NamedImpl kTests[] = {
    {"defined", tDefined},
    {"undefined", tUndefined},
    {"none", tNone},
    {"boolean", tBoolean},
    {"true", tTrue},
    {"false", tFalse},
    {"integer", tInteger},
    {"float", tFloat},
    {"number", tNumber},
    {"string", tString},
    {"mapping", tMapping},
    {"iterable", tIterable},
    {"sequence", tSequence},
    {"callable", tCallable},
    {"sameas", tSameas},
    {"equalto", tEq},
    {"eq", tEq},
    {"==", tEq},
    {"ne", tNe},
    {"!=", tNe},
    {"lt", tLt},
    {"<", tLt},
    {"lessthan", tLt},
    {"le", tLe},
    {"<=", tLe},
    {"gt", tGt},
    {">", tGt},
    {"greaterthan", tGt},
    {"ge", tGe},
    {">=", tGe},
    {"in", tIn},
    {"odd", tOdd},
    {"even", tEven},
    {"divisibleby", tDivisibleby},
    {"lower", tLower},
    {"upper", tUpper},
};

Expr::Impl findTest(std::string_view name) {
  for (const auto& t : kTests)
    if (t.name == name) return t.impl;
  return nullptr;
}

Value applyTest(Interp& in, std::string_view name, const Value& v, Args& a) {
  const Expr::Impl t = findTest(name);
  if (!t) evalFail(fmt::format("unsupported test '{}'", name));
  return t(in, v, a);
}

// ---------------------------------------------------------------------------------------------------------
// Methods of str and dict
// ---------------------------------------------------------------------------------------------------------

// Python's str.split(sep=None, maxsplit=-1).
Items pySplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  Items r;
  if (sep) {
    if (sep->empty()) evalFail("empty separator");
    size_t pos = 0;
    int64_t done = 0;
    while (maxsplit < 0 || done < maxsplit) {
      const size_t at = s.find(*sep, pos);
      if (at == std::string_view::npos) break;
      r.push_back(Value::string(std::string(s.substr(pos, at - pos))));
      pos = at + sep->size();
      ++done;
    }
    r.push_back(Value::string(std::string(s.substr(pos))));
    return r;
  }
  size_t i = 0;
  int64_t done = 0;
  while (true) {
    i = skipPySpace(s, i);
    if (i >= s.size()) break;
    if (maxsplit >= 0 && done >= maxsplit) {
      r.push_back(Value::string(pyStrip(s.substr(i), std::nullopt, false, true)));
      break;
    }
    size_t e = i;
    while (e < s.size()) {
      const size_t n = utf8Len(s, e);
      if (pySpace(utf8Decode(s, e, n))) break;
      e += n;
    }
    r.push_back(Value::string(std::string(s.substr(i, e - i))));
    ++done;
    i = e;
  }
  return r;
}

bool affixMatch(const std::string& s, const Value& what, bool prefix) {
  auto one = [&](const Value& p) {
    if (p.kind != Value::Kind::String) evalFail("startswith/endswith need a string or a tuple of strings");
    if (p.s.size() > s.size()) return false;
    return prefix ? s.compare(0, p.s.size(), p.s) == 0 : s.compare(s.size() - p.s.size(), p.s.size(), p.s) == 0;
  };
  if (what.kind == Value::Kind::List) {
    for (const auto& p : *what.list)
      if (one(p)) return true;
    return false;
  }
  return one(what);
}

Value getMethod(const Value& obj, const std::string& name) {
  if (obj.kind == Value::Kind::String) {
    const std::string s = obj.s;
    auto method = [&](auto fn) {
      return makeFunction("str." + name, [s, fn](Interp&, Args& a) -> Value { return fn(s, a); });
    };
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const bool l = name != "rstrip", r = name != "lstrip";
      return method([l, r](const std::string& x, Args& a) {
        return Value::string(pyStrip(x, optString(a, 0, "chars", "strip"), l, r));
      });
    }
    if (name == "split")
      return method([](const std::string& x, Args& a) {
        return Value::makeList(pySplit(x, optString(a, 0, "sep", "split"), optInt(a, 1, "maxsplit", -1, "split")));
      });
    if (name == "startswith" || name == "endswith") {
      const bool prefix = name == "startswith";
      return method([prefix](const std::string& x, Args& a) {
        if (a.pos.empty()) evalFail("startswith/endswith need an argument");
        return Value::boolean(affixMatch(x, a.pos[0], prefix));
      });
    }
    if (name == "upper")
      return method([](const std::string& x, Args&) { return Value::string(asciiMap(x, toUpperAscii)); });
    if (name == "lower")
      return method([](const std::string& x, Args&) { return Value::string(asciiMap(x, toLowerAscii)); });
    if (name == "title") return method([](const std::string& x, Args&) { return Value::string(pyTitle(x)); });
    if (name == "capitalize") return method([](const std::string& x, Args&) { return Value::string(pyCapitalize(x)); });
    if (name == "replace")
      return method([](const std::string& x, Args& a) {
        if (a.pos.size() < 2 || a.pos[0].kind != Value::Kind::String || a.pos[1].kind != Value::Kind::String)
          evalFail("str.replace needs two strings");
        return Value::string(pyReplace(x, a.pos[0].s, a.pos[1].s, optInt(a, 2, "count", -1, "replace")));
      });
    if (name == "find" || name == "count")
      return method([name](const std::string& x, Args& a) {
        if (a.pos.empty() || a.pos[0].kind != Value::Kind::String) evalFail("str." + name + " needs a string");
        const std::string& sub = a.pos[0].s;
        if (name == "find") {
          const size_t at = x.find(sub);
          return Value::integer(
              at == std::string::npos ? -1 : static_cast<int64_t>(codepointCount(std::string_view(x).substr(0, at))));
        }
        if (sub.empty()) return Value::integer(static_cast<int64_t>(codepointCount(x) + 1));
        int64_t n = 0;
        for (size_t at = x.find(sub); at != std::string::npos; at = x.find(sub, at + sub.size())) ++n;
        return Value::integer(n);
      });
    if (name == "join")
      return method([](const std::string& x, Args& a) {
        if (a.pos.empty()) evalFail("str.join needs an iterable");
        std::string r;
        bool first = true;
        for (const auto& item : iterate(a.pos[0])) {
          if (item.kind != Value::Kind::String)
            evalFail(fmt::format("sequence item: expected str instance, {} found", typeName(item)));
          if (!first) r += x;
          first = false;
          r += item.s;
        }
        return Value::string(std::move(r));
      });
    return {};
  }
  if (obj.kind == Value::Kind::Dict) {
    const std::shared_ptr<Map> d = obj.dict;
    if (name == "items")
      return makeFunction("dict.items", [d](Interp& in, Args& a) { return fItems(in, Value::makeDict(d), a); });
    if (name == "keys")
      return makeFunction("dict.keys", [d](Interp&, Args&) { return Value::makeList(iterate(Value::makeDict(d))); });
    if (name == "values")
      return makeFunction("dict.values", [d](Interp&, Args&) {
        Items r;
        for (const auto& [k, x] : d->items) r.push_back(x);
        return Value::makeList(std::move(r));
      });
    if (name == "get")
      return makeFunction("dict.get", [d](Interp&, Args& a) {
        if (a.pos.empty()) evalFail("dict.get needs a key");
        const Value* v = a.pos[0].kind == Value::Kind::String ? d->find(a.pos[0].s) : nullptr;
        if (v) return *v;
        return a.pos.size() > 1 ? a.pos[1] : Value::none();
      });
  }
  return {};
}

// ---------------------------------------------------------------------------------------------------------
// Globals
// ---------------------------------------------------------------------------------------------------------

std::unordered_map<std::string, Value> makeGlobals() {
  std::unordered_map<std::string, Value> g;
  g["raise_exception"] = makeFunction("raise_exception", [](Interp&, Args& a) -> Value {
    throw RaisedError{a.pos.empty() ? std::string() : toStr(a.pos[0])};
  });
  g["namespace"] = makeFunction("namespace", [](Interp& in, Args& a) {
    auto d = std::make_shared<Map>();
    in.namespaces.push_back(d);
    for (const auto& p : a.pos) {
      if (p.kind != Value::Kind::Dict) evalFail("namespace() takes a dict or keyword arguments");
      for (const auto& [k, v] : p.dict->items) d->set(k, v);
    }
    for (auto& [k, v] : a.kw) d->set(k, v);
    Value v;
    v.kind = Value::Kind::Namespace;
    v.dict = std::move(d);
    return v;
  });
  g["dict"] = makeFunction("dict", [](Interp&, Args& a) {
    auto d = std::make_shared<Map>();
    for (auto& [k, v] : a.kw) d->set(k, v);
    return Value::makeDict(std::move(d));
  });
  g["range"] = makeFunction("range", [](Interp&, Args& a) {
    for (const auto& p : a.pos)
      if (!isIntLike(p)) evalFail(fmt::format("'{}' object cannot be interpreted as an integer", typeName(p)));
    int64_t start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1) {
      stop = asInt(a.pos[0]);
    } else if (a.pos.size() == 2 || a.pos.size() == 3) {
      start = asInt(a.pos[0]);
      stop = asInt(a.pos[1]);
      if (a.pos.size() == 3) step = asInt(a.pos[2]);
    } else {
      evalFail("range expects 1 to 3 arguments");
    }
    if (step == 0) evalFail("range() arg 3 must not be zero");
    Items r;
    for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
      if (r.size() >= 100000) evalFail("range too big (jinja2's sandbox allows 100000 items)");
      r.push_back(Value::integer(k));
      if (__builtin_add_overflow(k, step, &k)) break;
    }
    return Value::makeList(std::move(r));
  });
  g["strftime_now"] = makeFunction("strftime_now", [](Interp&, Args& a) {
    if (a.pos.empty() || a.pos[0].kind != Value::Kind::String) evalFail("strftime_now needs a format string");
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof buf, a.pos[0].s.c_str(), &tm);
    return Value::string(std::string(buf, n));
  });
  return g;
}

// ---------------------------------------------------------------------------------------------------------
// Builtin templates, verbatim as published by their models (tokenizer_config.json "chat_template").
// ---------------------------------------------------------------------------------------------------------

struct Builtin {
  std::string_view name;
  std::string_view source;
};

// SmolLM2-135M/360M/1.7B-Instruct (the string in the default model's GGUF).
constexpr std::string_view kSmolLM2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Plain ChatML (OpenHermes-2.5, transformers' former default ChatML template).
constexpr std::string_view kChatML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Qwen2-Instruct and Qwen1.5-Chat: ChatML with a default system message.
constexpr std::string_view kQwen2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou "
    "are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

// Qwen2.5-Instruct.
constexpr std::string_view kQwen25 = R"JINJA({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)JINJA";

// Meta-Llama-3-8B-Instruct (and -70B).
constexpr std::string_view kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

// Llama-3.1-8B-Instruct (and -70B, -405B).
constexpr std::string_view kLlama31 = R"JINJA({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)JINJA";

// Llama-2-7b/13b/70b-chat-hf.
constexpr std::string_view kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

// Mistral-7B-Instruct-v0.1 and v0.2.
constexpr std::string_view kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are "
    "supported!') }}{% endif %}{% endfor %}";

// HuggingFaceH4/zephyr-7b-beta and TinyLlama-1.1B-Chat-v1.0.
constexpr std::string_view kZephyr =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% "
    "elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif "
    "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

constexpr Builtin kBuiltins[] = {
    {"smollm2", kSmolLM2},  {"chatml", kChatML}, {"qwen2", kQwen2},     {"qwen2.5", kQwen25}, {"llama3", kLlama3},
    {"llama3.1", kLlama31}, {"llama2", kLlama2}, {"mistral", kMistral}, {"zephyr", kZephyr},
};

constexpr std::string_view kBuiltinNames[] = {"smollm2",  "chatml", "qwen2",   "qwen2.5", "llama3",
                                              "llama3.1", "llama2", "mistral", "zephyr"};

std::string builtinList() {
  std::string r;
  for (auto n : kBuiltinNames) r += (r.empty() ? "" : "|") + std::string(n);
  return r;
}

// What a template means, independent of how it spells it: its pieces and tokens (string literals decoded),
// so that '\n' written as an escape or as a newline inside a string literal are the same template.
std::string signature(std::string_view source) {
  std::string sig;
  for (const Piece& p : Lexer(source).run()) {
    if (p.kind == Piece::Kind::Text) {
      sig += fmt::format("T{}:{}", p.text.size(), p.text);
      continue;
    }
    sig += p.kind == Piece::Kind::Output ? "O" : "S";
    for (const Token& t : p.tokens) {
      switch (t.kind) {
        case Tok::Int:
          sig += fmt::format("i{};", t.ival);
          break;
        case Tok::Float:
          sig += "f" + pyFloat(t.fval) + ";";
          break;
        case Tok::End:
          sig += "e";
          break;
        default:
          sig += fmt::format("{}{}:{}", static_cast<int>(t.kind), t.text.size(), t.text);
      }
    }
  }
  return sig;
}

const std::vector<std::pair<std::string_view, std::string>>& builtinSignatures() {
  static const auto sigs = [] {
    std::vector<std::pair<std::string_view, std::string>> r;
    for (const auto& b : kBuiltins) r.emplace_back(b.name, signature(b.source));
    return r;
  }();
  return sigs;
}

Value messagesValue(std::span<const ChatMessage> messages) {
  Items list;
  list.reserve(messages.size());
  for (const auto& m : messages) {
    auto d = std::make_shared<Map>();
    d->items = {{"role", Value::string(m.role)}, {"content", Value::string(m.content)}};
    list.push_back(Value::makeDict(std::move(d)));
  }
  return Value::makeList(std::move(list));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------------

ChatTemplate::ChatTemplate(std::string source) {
  auto p = std::make_shared<Program>();
  Lexer lexer(source);
  Parser parser(lexer.run());
  p->body = parser.parseTemplate();
  const std::string sig = signature(source);
  for (const auto& b : builtinSignatures())
    if (b.second == sig) p->family = std::string(b.first);
  p->source = std::move(source);
  program_ = std::move(p);
}

std::span<const std::string_view> ChatTemplate::builtinNames() { return kBuiltinNames; }

std::string_view ChatTemplate::builtinSource(std::string_view name) {
  for (const auto& b : kBuiltins)
    if (b.name == name) return b.source;
  throw InvalidArgument(fmt::format("unknown chat template '{}' (known: {})", name, builtinList()));
}

ChatTemplate ChatTemplate::builtin(std::string_view name) { return ChatTemplate(std::string(builtinSource(name))); }

ChatTemplate ChatTemplate::forModel(const gguf::File& file, std::string_view forced) {
  if (!forced.empty()) return builtin(forced);
  const std::string src = chatTemplateFromGguf(file);
  try {
    return ChatTemplate(src);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(
        fmt::format("{}: its tokenizer.chat_template is not one flashring can run ({}); force a "
                    "known format with --chat-template {}",
                    file.path(), e.what(), builtinList()));
  }
}

const std::string& ChatTemplate::source() const { return program_->source; }
std::string_view ChatTemplate::family() const { return program_->family; }

std::string ChatTemplate::render(std::span<const ChatMessage> messages, const ChatRenderOptions& options) const {
  Interp in;
  in.frames.push_back(makeGlobals());
  auto& ctx = in.frames.back();
  ctx["messages"] = messagesValue(messages);
  ctx["add_generation_prompt"] = Value::boolean(options.add_generation_prompt);
  ctx["bos_token"] = Value::string(options.bos_token);
  ctx["eos_token"] = Value::string(options.eos_token);
  ctx["tools"] = Value::none();  // HF passes tools=None and documents=None when there are none
  ctx["documents"] = Value::none();
  for (const auto& [k, v] : options.variables) ctx[k] = Value::string(v);
  in.frames.emplace_back();  // the template's own top-level scope
  try {
    in.exec(program_->body);
  } catch (const RaisedError& e) {
    throw InvalidArgument("chat template refused the conversation: " + e.message);
  }
  return std::move(in.out);
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token) const {
  ChatRenderOptions o;
  o.add_generation_prompt = add_generation_prompt;
  o.bos_token = bos_token;
  o.eos_token = eos_token;
  return render(messages, o);
}

std::string renderChat(const std::string& template_src, std::span<const ChatMessage> messages,
                       bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token) {
  return ChatTemplate(template_src).render(messages, add_generation_prompt, bos_token, eos_token);
}

std::string chatTemplateFromGguf(const gguf::File& file) {
  constexpr std::string_view kKey = "tokenizer.chat_template";
  if (!file.has(kKey))
    throw InvalidArgument(fmt::format("{} has no {} (no chat format): choose one with --chat-template {}", file.path(),
                                      kKey, builtinList()));
  try {
    return file.getString(kKey);
  } catch (const Error& e) {
    throw InvalidArgument(fmt::format("{}: {} is not a string ({})", file.path(), kKey, e.what()));
  }
}

ChatSpecialTokens chatSpecialTokensFromGguf(const gguf::File& file) {
  ChatSpecialTokens t;
  if (!file.has("tokenizer.ggml.tokens")) return t;
  const auto tokens = file.getStringArray("tokenizer.ggml.tokens");
  auto text = [&](std::string_view key) -> std::string {
    if (!file.has(key)) return {};
    const int64_t id = file.getInt(key);
    if (id < 0 || static_cast<uint64_t>(id) >= tokens.size())
      throw InvalidArgument(
          fmt::format("{}: {} = {} is outside the vocabulary ({} tokens)", file.path(), key, id, tokens.size()));
    return tokens[static_cast<size_t>(id)];
  };
  t.bos = text("tokenizer.ggml.bos_token_id");
  t.eos = text("tokenizer.ggml.eos_token_id");
  return t;
}

}  // namespace flashring
