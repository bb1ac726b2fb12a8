"""The docs are a manual: links stay inside the repository, no diary text, commands that parse, records that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from attnzoo.cli import build_parser, parse_command_line

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "src/attnzoo/configs/README.md", *(ROOT / "docs").rglob("*.md")])
DIARY = re.compile(r"\d\d:\d\d(-\d\d:\d\d)? UTC|load average|this session|this morning|yesterday", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
FENCE = re.compile(r"```bash\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`(attnzoo [^`]+)`")
RECORD = re.compile(r"docs/records/[\w./-]+")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def documented_commands(text: str) -> list[str]:
    """`attnzoo ...` command lines of a page: every one in a bash block, and inline ones that pass a flag.

    Inline spans that quote output (``attnzoo train: error ...``), prose alternatives (``a | b``) or a bare
    sub-command name are not commands and are skipped.
    """
    lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    inline = [c for c in INLINE.findall(text) if " --" in c and "|" not in c and not c.split()[1].endswith(":")]
    commands = []
    for line in lines + inline:
        for part in line.split(" #")[0].split("&&"):
            part = part.strip()
            if part.startswith("torchrun ") and "-m attnzoo.train " in part:
                part = "attnzoo " + part.split("-m attnzoo.train ", 1)[1]
            if part.startswith("attnzoo ") and "..." not in part:
                commands.append(part)
    return commands


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_stay_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "shared/specs" not in text, f"{_rel(page)} cites a specification file outside the repository"
    for target, _ in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{_rel(page)}: link to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_pages_are_not_a_diary(page: Path) -> None:
    found = [m.group(0) for m in DIARY.finditer(page.read_text())]
    assert not found, f"{_rel(page)} reads like a lab log: {found}"


def test_quoted_records_exist() -> None:
    quoted = {m.rstrip(".,)`") for page in PAGES for m in RECORD.findall(page.read_text())}
    assert quoted, "no page quotes docs/records"
    missing = sorted(r for r in quoted if not any(ROOT.glob(r.replace("<", "*").split("*")[0] + "*")))
    assert not missing, f"records quoted but not in the repository: {missing}"


def test_documented_commands_parse() -> None:
    parser = build_parser()
    failed = []
    checked = 0
    for page in PAGES:
        for command in documented_commands(page.read_text()):
            checked += 1
            try:
                parse_command_line(parser, shlex.split(command)[1:])
            except SystemExit as exc:
                if exc.code:
                    failed.append(f"{_rel(page)}: {command}")
    assert checked > 40, checked
    assert not failed, "commands the CLI refuses:\n" + "\n".join(failed)


def test_documented_commands_finds_block_and_inline_commands() -> None:
    text = (
        "```bash\nattnzoo train --task copy \\\n    --steps 5   # comment\n"
        "git clone x && attnzoo compare\n```\n"
        "Run `attnzoo bench --quick`, not `attnzoo train: error: x --y` nor `attnzoo train --task a | b`."
    )
    commands = [" ".join(c.split()) for c in documented_commands(text)]
    assert commands == ["attnzoo train --task copy --steps 5", "attnzoo compare", "attnzoo bench --quick"]
