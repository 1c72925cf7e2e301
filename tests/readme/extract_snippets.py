#!/usr/bin/env python3
"""Turns README.md's C++ snippets into one C++ program, so they cannot drift.

Every ```cpp block of README.md becomes a function `readme::snippet_<line>()`
(<line>: the line of its opening fence) in the generated source, with `#line`
directives pointing back at README.md, so a compiler error names the README
line. The build compiles it (tests/CMakeLists.txt); ctest runs each snippet
marked `run` as its own test, `readme_snippet_<line>`, in a fresh directory.

How a block is placed:
  - `#include` lines go to the top of the file;
  - a `class`/`struct` definition starting in column 0 (up to its `};` in
    column 0) goes to namespace scope, in the snippet's own namespace;
  - the other lines are the body of the snippet's function, inside an inner
    block, so a snippet may re-declare a name of its context (`args`, `step`).

A block's context (the names it uses without declaring them: `model`,
`optimizer`, `args`, `step`, `train_one_step`, ...) comes from
tests/readme/prelude.h. An HTML comment on the line before the fence tunes it:
  <!-- snippet: run -->                  compile and run it
  <!-- snippet: run with=checkpointer --> also give it a `checkpointer`
  <!-- snippet: with=dist -->            compile only, with `pg`, `store`, ...
  <!-- snippet: skip reason="..." -->     neither (a reason is required)
Words after `with=` (comma-separated): checkpointer, file, dist.

Usage: extract_snippets.py README.md OUT.cc   (writes OUT.cc and OUT.cc.list,
the names of the snippets to run, one per line).
"""

import re
import sys

MARKER = re.compile(r"^<!--\s*snippet:(?P<opts>.*?)-->\s*$")
CONTEXTS = {"checkpointer", "file", "dist"}


class SnippetError(Exception):
    pass


def parse_options(text, where):
    opts = {"run": False, "with": [], "skip": None}
    for token in re.findall(r'\w+="[^"]*"|\S+', text):
        if token == "run":
            opts["run"] = True
        elif token.startswith("with="):
            words = [w for w in token[len("with="):].split(",") if w]
            unknown = set(words) - CONTEXTS
            if unknown:
                raise SnippetError(f"{where}: unknown context {sorted(unknown)} "
                                   f"(known: {sorted(CONTEXTS)})")
            opts["with"] = words
        elif token.startswith("skip"):
            m = re.fullmatch(r'skip\s*reason="([^"]+)"', token) or re.fullmatch(
                r'reason="([^"]+)"', token)
            opts["skip"] = m.group(1) if m else ""
        elif token.startswith('reason="'):
            opts["skip"] = token[len('reason="'):-1]
        else:
            raise SnippetError(f"{where}: unknown snippet option '{token}'")
    if opts["skip"] == "":
        raise SnippetError(f"{where}: 'skip' needs reason=\"...\"")
    return opts


def find_snippets(lines):
    """Yields (fence_line, options, [(line_no, text)]) for each ```cpp block."""
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```cpp":
            fence = i + 1  # 1-based line of the opening fence
            marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
            opts = parse_options(marker.group("opts") if marker else "",
                                 f"README.md:{fence}")
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append((i + 1, lines[i]))
                i += 1
            if i == len(lines):
                raise SnippetError(f"README.md:{fence}: unterminated ```cpp block")
            yield fence, opts, body
        i += 1


def split_snippet(body, fence):
    includes, toplevel, statements = [], [], []
    in_class = False
    for line_no, text in body:
        if in_class:
            toplevel.append((line_no, text))
            if text.startswith("};"):
                in_class = False
        elif text.startswith("#include"):
            includes.append((line_no, text))
        elif re.match(r"(class|struct)\s+\w+", text) and not text.rstrip().endswith(";"):
            toplevel.append((line_no, text))
            in_class = True
        else:
            statements.append((line_no, text))
    if in_class:
        raise SnippetError(f"README.md:{fence}: class without '}};' in column 0")
    return includes, toplevel, statements


def emit_lines(out, chunk):
    last = None
    for line_no, text in chunk:
        if last is None or line_no != last + 1:
            out.append(f'#line {line_no} "README.md"')
        out.append(text)
        last = line_no


def generate(readme_lines):
    includes, parts, runs = [], [], []
    for fence, opts, body in find_snippets(readme_lines):
        if opts["skip"] is not None:
            parts.append(f"// README.md:{fence} skipped: {opts['skip']}")
            continue
        inc, toplevel, statements = split_snippet(body, fence)
        includes.extend(inc)
        name = f"snippet_{fence}"
        parts.append(f"namespace readme {{\nnamespace {name}_scope {{")
        emit_lines(parts, toplevel)
        parts.append(f'#line {fence} "README.md"')
        parts.append(f"int {name}() {{")
        for context in ["base"] + opts["with"]:
            parts.append(f"  ACKPT_README_CONTEXT_{context.upper()}")
        parts.append("  {")
        emit_lines(parts, statements)
        parts.append("  }")
        parts.append("  return 0;")
        parts.append("}")
        parts.append(f"}}  // namespace {name}_scope")
        parts.append(f"using {name}_scope::{name};")
        parts.append("}  // namespace readme")
        if opts["run"]:
            runs.append(name)
    out = ["// Generated by tests/readme/extract_snippets.py from README.md. Do not edit.",
           '#include "prelude.h"']
    emit_lines(out, includes)
    out.append('#line 1 "readme_snippets.cc"')
    out.extend(parts)
    out.append("namespace readme {")
    out.append("const Snippet kSnippets[] = {")
    for fence, opts, _ in find_snippets(readme_lines):
        if opts["skip"] is None:
            out.append(f'  {{"snippet_{fence}", {str(opts["run"]).lower()}, &snippet_{fence}}},')
    out.append("};")
    out.append("}  // namespace readme")
    out.append("int main(int argc, char** argv) { return readme::Main(argc, argv, readme::kSnippets); }")
    return "\n".join(out) + "\n", runs


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        source, runs = generate(lines)
    except SnippetError as e:
        print(f"extract_snippets: {e}", file=sys.stderr)
        return 1
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(source)
    with open(argv[2] + ".list", "w", encoding="utf-8") as f:
        f.write("".join(r + "\n" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
