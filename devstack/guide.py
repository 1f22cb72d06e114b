"""The seed guide (docs/background-workers-guide.md) as data: its SQL blocks by heading.

The guide test and ``make demo`` run these blocks exactly as the guide prints them, so the
guide and pgnats cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

GUIDE_PATH = Path(__file__).resolve().parents[1] / "docs" / "background-workers-guide.md"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass(frozen=True)
class GuideBlock:
    heading: str
    sql: str
    line: int


def guide_blocks(path: Path = GUIDE_PATH) -> list[GuideBlock]:
    """Every ```sql block of the guide, with the heading it stands under."""
    blocks: list[GuideBlock] = []
    heading = ""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _HEADING.match(line)
        if match:
            heading = match.group(2)
        elif line.strip() == "```sql":
            start = index + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            blocks.append(GuideBlock(heading, "\n".join(lines[start:end]) + "\n", start + 1))
            index = end
        index += 1
    return blocks


def guide_sql(heading: str, path: Path = GUIDE_PATH) -> str:
    """The SQL under ``heading`` (all its blocks), without psql's ``\\!`` shell lines."""
    found = [block.sql for block in guide_blocks(path) if block.heading == heading]
    if not found:
        raise KeyError(f"no SQL block under heading {heading!r} in {path}")
    return without_shell_lines("".join(found))


def without_shell_lines(sql: str) -> str:
    """Drop ``\\! sudo tail ...`` lines: they name one machine's log path."""
    return "".join(line for line in sql.splitlines(keepends=True) if not line.startswith("\\!"))


def run_psql(url: str, sql: str, *, timeout: float = 60.0) -> str:
    """Run ``sql`` with psql as a user would (stop at the first error); return its output."""
    result = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed ({result.returncode}):\n{result.stderr}\nSQL:\n{sql}")
    return result.stdout + result.stderr
