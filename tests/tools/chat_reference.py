#!/usr/bin/env python3
"""Reference renderings of chat templates by jinja2, in the environment Hugging Face transformers uses.

transformers' apply_chat_template compiles a chat template with
    ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[AssistantTracker, jinja2.ext.loopcontrols])
plus its own `tojson` filter (json.dumps, no HTML escaping) and the globals `raise_exception` and
`strftime_now`, and renders it with messages=..., tools=None, documents=None, add_generation_prompt=...
and the tokenizer's special tokens (bos_token, eos_token, ...) and any extra keyword arguments
(transformers/utils/chat_template_utils.py, _compile_jinja_template and render_jinja_template). This
script builds the same environment (AssistantTracker's {% generation %} reduced to rendering its body)
and renders every template of tests/fixtures/chat/cases.json (templates/NAME.jinja) with every
conversation there, with add_generation_prompt false and true. The output is JSON: one case per
rendering with its inputs and either "output" or "error" (with "raised": true when the template called
raise_exception, whose message is then compared too).

  chat_reference.py                 JSON on stdout
  chat_reference.py --out FILE      JSON into FILE (regenerates tests/fixtures/chat/reference.json)
  chat_reference.py --check BINARY  renders into a temporary file and runs BINARY (flashring_unit_tests)
                                    --gtest_filter=ChatReference.* with FLASHRING_CHAT_REFERENCE naming
                                    it, so that flashring's renderer is compared with this jinja2 now;
                                    --random N (default 40 with --check) adds N seeded random
                                    conversations (odd roles, Unicode spaces and controls, template-like
                                    text) to the fixture's

Exit code 3 (4 with --check: 77, CTest's SKIP_RETURN_CODE) when jinja2 cannot be imported.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures", "chat")


def make_environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # transformers' AssistantTracker without the index tracking: {% generation %} renders its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class Raised(jinja2.exceptions.TemplateError):
        pass

    def raise_exception(message):
        raise Raised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env, Raised


def random_conversations(n, seed=20251202):
    import random

    rng = random.Random(seed)
    pieces = list("abcXYZ 0129\n\t\r  ") + ["\u3000", "\u00a0", "\u2028", "\u0085", "\x1c", "é", "日本", "🙂", "'",
                                             '"', "\\", "{", "}", "%}", "{{", "#", "<|im_end|>", "\x07", "\u200b",
                                             "\ufeff", "\x7f", "\x80", "</think>", "/no_think"]
    roles = ["user", "assistant", "system", "tool", "ipython", "narrator", ""]
    convs = []
    for k in range(n):
        messages = []
        for i in range(rng.randint(0, 6)):
            role = rng.choice(roles) if rng.random() < 0.3 else ["user", "assistant"][i % 2]
            if i == 0 and rng.random() < 0.4:
                role = "system"
            content = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
            messages.append({"role": role, "content": content})
        convs.append({"name": f"random{k}", "messages": messages})
    return convs


def render_all(cases_path, extra_conversations=()):
    import jinja2

    env, raised = make_environment()
    with open(cases_path, encoding="utf-8") as f:
        spec = json.load(f)
    spec["conversations"] += list(extra_conversations)
    cases = []
    for t in spec["templates"]:
        path = os.path.join("templates", t["name"] + ".jinja")
        with open(os.path.join(os.path.dirname(cases_path), path), encoding="utf-8", newline="") as f:
            source = f.read()
        compiled = env.from_string(source)
        variables = t.get("variables", {})
        for conv in spec["conversations"]:
            for agp in (False, True):
                case = {
                    "template": t.get("label", t["name"]),
                    "file": path,
                    "conversation": conv["name"],
                    "add_generation_prompt": agp,
                    "bos_token": t["bos_token"],
                    "eos_token": t["eos_token"],
                    "variables": variables,
                    "messages": conv["messages"],
                }
                try:
                    case["output"] = compiled.render(messages=[dict(m) for m in conv["messages"]], tools=None,
                                                     documents=None, add_generation_prompt=agp,
                                                     bos_token=t["bos_token"], eos_token=t["eos_token"], **variables)
                except raised as e:
                    case["error"] = str(e)
                    case["raised"] = True
                except Exception as e:  # UndefinedError, TypeError, ...: flashring must fail too
                    case["error"] = f"{type(e).__name__}: {e}"
                    case["raised"] = False
                cases.append(case)
    return {
        "reference": f"jinja2 {jinja2.__version__}, transformers' chat template environment "
                     "(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, HF tojson)",
        "command": "python3 tests/tools/chat_reference.py --out tests/fixtures/chat/reference.json",
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=os.path.join(FIXTURES, "cases.json"))
    ap.add_argument("--out")
    ap.add_argument("--check", metavar="BINARY")
    ap.add_argument("--random", type=int, metavar="N")
    args = ap.parse_args()

    try:
        import jinja2  # noqa: F401
    except Exception as e:
        print(f"skipped: jinja2 is not importable ({e}); scripts/install-deps.sh installs it (pip jinja2)")
        return 77 if args.check else 3

    n_random = args.random if args.random is not None else (40 if args.check else 0)
    result = render_all(args.cases, random_conversations(n_random))
    text = json.dumps(result, ensure_ascii=False, indent=1) + "\n"
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "chat_reference.json")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            env = dict(os.environ, FLASHRING_CHAT_REFERENCE=path)
            print(f"chat_reference: {len(result['cases'])} renderings by {result['reference']}", flush=True)
            return subprocess.call([args.check, "--gtest_filter=ChatReference.*"], env=env)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
