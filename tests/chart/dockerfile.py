"""A small Dockerfile reader for the image tests: instructions, stages, .dockerignore.

No container engine runs here, so the tests read the Dockerfiles the way the builder
would: continuation lines joined, comments and parser directives dropped, build ARGs
substituted into FROM, exec-form JSON decoded.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Instruction:
    cmd: str                 # upper-case keyword
    args: str                # the rest of the (joined) line
    line: int                # 1-based line where it starts

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`--from=build --chown=1:1 a b c` -> ({"from": "build", "chown": "1:1"}, [a, b, c])."""
        words = shlex.split(self.args)
        flags = {}
        while words and words[0].startswith("--"):
            k, _, v = words.pop(0)[2:].partition("=")
            flags[k] = v
        return flags, words

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(x, str) for x in value) else None


@dataclass
class Stage:
    base: str                # FROM image, ARGs substituted
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


def parse(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue                  # comments inside a continued instruction are dropped
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    if buf:
        raise ValueError(f"line {start}: instruction continued past the end of the file")
    return out


def _substitute(s: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), s)


def stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, and the build stages in order."""
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "ARG" and not out:
            k, _, v = ins.args.partition("=")
            global_args[k] = v.strip('"')
        elif ins.cmd == "FROM":
            flags, words = ins.flags_and_words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(_substitute(words[0], global_args), name, len(out)))
        elif not out:
            raise ValueError(f"line {ins.line}: {ins.cmd} before the first FROM")
        else:
            out[-1].instructions.append(ins)
    return global_args, out


def ignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """.dockerignore lines as (exclude?, regex) in order; the last match decides."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((not negate, re.compile(rx + r"\Z")))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether the builder leaves `path` (relative, '/'-separated) out of the context.

    As the builder does it: a pattern matches a path or any of its parent folders, and
    the last matching pattern wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for exclude, rx in patterns:
        if any(rx.match(c) for c in candidates):
            result = exclude
    return result
