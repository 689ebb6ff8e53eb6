"""The shell blocks of README.md and docs/**/*.md, and how each is to be checked.

A fenced ```bash or ```console block is a command a reader will type. It runs in the suite unless
an HTML comment right before it (blank lines allowed) says otherwise:
`<!-- not-run: REASON -->` (never executed, e.g. needs the internet or a GPU) or
`<!-- slow: REASON -->` (executed under `-m slow`). In a console block, only lines starting with
`$ ` are commands; the rest is output. Every `textloop` command in any block, run or not, is
parsed by the CLI itself (tests/e2e/test_documented_commands.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(not-run|slow)\s*:\s*(.+?)\s*-->\s*$")
SHELLS = ("bash", "console")
SEPARATORS = {"&&", "||", "|", ";"}
REDIRECT = re.compile(r"^\d*(>>?|<)")


@dataclass(frozen=True)
class Block:
    """One shell block: where it is, its commands, and how the suite treats it."""

    path: Path
    line: int
    commands: str
    mode: str  # "run" | "slow" | "not-run"
    reason: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def documented_files() -> list[Path]:
    """The README and every page of the docs site."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _commands(lang: str, body: list[str]) -> str:
    """The text a shell runs: a console block keeps only its `$ ` lines, without the prompt."""
    if lang == "console":
        return "\n".join(line[2:] for line in body if line.startswith("$ "))
    return "\n".join(body)


def _marker(lines: list[str], fence_index: int) -> tuple[str, str]:
    """The (mode, reason) the comment before a fence gives; ("run", "") when there is none."""
    i = fence_index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    match = MARKER.match(lines[i].strip()) if i >= 0 else None
    return (match.group(1), match.group(2)) if match else ("run", "")


def blocks(path: Path, langs: tuple[str, ...] = SHELLS) -> list[Block]:
    """Every block of one Markdown file in the given languages (shell by default), in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if match.group(1) in langs:
            mode, reason = _marker(lines, i)
            out.append(Block(path, i + 1, _commands(match.group(1), lines[i + 1:end]), mode, reason))
        i = end + 1
    return out


def all_blocks(langs: tuple[str, ...] = SHELLS) -> list[Block]:
    """Every shell block (or block of the given languages) of the README and the docs."""
    return [b for path in documented_files() for b in blocks(path, langs)]


def _words(commands: str) -> list[str]:
    """A block's words as the shell splits them, comments dropped."""
    return [w for line in commands.replace("\\\n", " ").splitlines()
            for w in shlex.split(line, comments=True)]


def setting_overrides(commands: str) -> list[str]:
    """Every KEY=VALUE a block passes to `textloop ... --set` or `dvc exp run -S`."""
    words, out = _words(commands), []
    for i, word in enumerate(words):
        if word in ("--set", "-S", "--set-param") and i + 1 < len(words):
            out.append(words[i + 1].lstrip("+"))
        elif word.startswith("--set="):
            out.append(word.split("=", 1)[1])
    return out


def textloop_invocations(commands: str) -> list[list[str]]:
    """The argument lists given to `textloop` in a block (`.venv/bin/textloop` included),
    comments dropped, one per simple command."""
    out = []
    for line in commands.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        simple: list[str] = []
        redirected = False
        for word in [*words, ";"]:
            if word in SEPARATORS:
                if simple and Path(simple[0]).name == "textloop":
                    out.append(simple[1:])
                simple, redirected = [], False
            elif REDIRECT.match(word) or redirected:
                redirected = True  # `> FILE` and what follows belong to the shell, not the CLI
            else:
                simple.append(word)
    return out


INLINE = re.compile(r"`(textloop [^`]+)`")
USAGE_WORD = re.compile(r"--[\w-]+|[^\s\[\]|\\…]+")


def inline_invocations(path: Path) -> list[tuple[int, list[str]]]:
    """Every `textloop ...` in inline code (prose and tables), as (line, words): usage syntax
    such as `[--data PATH]`, `A | B` and `…` is reduced to its words."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for span in INLINE.findall(line):
            out.append((number, USAGE_WORD.findall(span)[1:]))
    return out
