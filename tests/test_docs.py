"""The docs hold: every relative link and anchor resolves, and every ``seqvi ...`` command shown in the README
and docs/*.md is a command of the CLI with options it has.

Commands are read from fenced code blocks and inline code spans; quoted strings are dropped first (so the
options inside ``--eval "--bound all"`` belong to nobody), a ``#`` starts a comment, and ``&&``, ``;`` and
``|`` separate commands on one line.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
GLOBAL = {"--debug", "--version", "--help", "--install-completion", "--show-completion"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def code_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, code) for every line of a fenced block and every inline code span."""
    out, fence = [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            out.append((number, line))
        else:
            out.extend((number, span) for span in re.findall(r"`([^`]+)`", line))
    return out


def shown_commands(page: Path) -> list[tuple[int, str, list[str]]]:
    """(line, command name, its --options) for every ``seqvi COMMAND ...`` shown on a page."""
    found = []
    for number, code in code_lines(page):
        code = re.sub(r"\"[^\"]*\"|'[^']*'", "''", code.split(" #")[0])
        for part in re.split(r"&&|;|\|", code):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            for i, word in enumerate(words):
                if word != "seqvi" and not word.endswith("/seqvi"):
                    continue
                rest = words[i + 1:]
                while rest and rest[0] in GLOBAL:
                    rest = rest[1:]
                if not rest or not re.fullmatch(r"[a-z][a-z-]*", rest[0]):
                    break
                options = [w.split("=")[0].strip("[]") for w in rest[1:] if w.lstrip("[").startswith("--")]
                found.append((number, rest[0], options))
                break
    return found


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    assert len(text.splitlines()) <= 250


@pytest.fixture(scope="module")
def cli_commands() -> dict:
    from seqvi.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
            for name, cmd in group.commands.items()}


def test_every_command_shown_in_the_docs_exists(cli_commands):
    wrong = []
    seen = 0
    for page in PAGES:
        for number, name, options in shown_commands(page):
            seen += 1
            if name not in cli_commands:
                wrong.append(f"{page.name}:{number}: seqvi {name} is not a command")
                continue
            wrong += [f"{page.name}:{number}: seqvi {name} has no option {o}" for o in options
                      if o not in cli_commands[name]]
    assert seen > 20          # the reader found the commands (a broken reader would find none)
    assert not wrong, "\n".join(wrong)


def test_the_reader_catches_a_wrong_command_and_option(tmp_path, cli_commands):
    page = tmp_path / "x.md"
    page.write_text("```\nseqvi trian recipes/x.yaml\nseqvi eval --checkpoint r --bogus 1  # comment --nope\n```\n"
                    "and `seqvi --debug sweep R --eval \"--nope\" --seeds 0`\n")
    shown = shown_commands(page)
    assert [(n, c) for n, c, _ in shown] == [(2, "trian"), (3, "eval"), (5, "sweep")]
    assert "trian" not in cli_commands
    assert [o for o in shown[1][2] if o not in cli_commands["eval"]] == ["--bogus"]
    assert shown[2][2] == ["--eval", "--seeds"]
