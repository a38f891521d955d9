"""The README's runnable code blocks run, so the README cannot rot.

A fenced block is runnable when the line before its opening fence is
``<!-- runnable -->`` or ``<!-- runnable: coordinator -->``. Blocks run in a
scratch directory that links the repository's top-level entries (so
``.venv/bin/fedgrpc``, ``client/...`` and ``make`` work as the README says,
and files a block writes land in the scratch directory). ``sh`` blocks run
under ``bash -euo pipefail``, ``python`` blocks under the venv's Python.
For ``coordinator`` blocks a real ``fedgrpc serve`` (open enrollment, one
client per round) is started first and the README's ``127.0.0.1:7070``
is replaced by its bound address.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Spawn
from tests.helpers.serve import start_serve

REPO = Path(__file__).resolve().parents[2]
FEDGRPC = Path(sys.executable).with_name("fedgrpc")
README_ADDRESS = "127.0.0.1:7070"
MIN_RUNNABLE = 6
"""A floor, so that markers cannot silently disappear from the README."""
BLOCK_TIMEOUT_S = 90
LINKED = (
    ".venv", "client", "server", "protos", "scripts", "fedgrpc", "Makefile",
    "pyproject.toml", "bench",
)  # fmt: skip
_MARKED = re.compile(
    r"^<!-- runnable(?::\s*(?P<needs>[a-z]+))? -->\n"
    r"```(?P<lang>[a-z]+)\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
pytestmark = pytest.mark.system


@dataclass(frozen=True)
class Block:
    """One runnable README block."""

    heading: str
    lang: str
    code: str
    needs: str | None


def _blocks() -> list[Block]:
    text = (REPO / "README.md").read_text()
    blocks = []
    for match in _MARKED.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        blocks.append(
            Block(
                heading=headings[-1] if headings else "top",
                lang=match["lang"],
                code=match["code"],
                needs=match["needs"],
            )
        )
    return blocks


BLOCKS = _blocks()


def _id(block: Block) -> str:
    return re.sub(r"[^a-z0-9]+", "-", block.heading.lower()).strip("-")


def test_the_readme_keeps_its_runnable_blocks() -> None:
    assert len(BLOCKS) >= MIN_RUNNABLE, [_id(b) for b in BLOCKS]
    assert {b.lang for b in BLOCKS} <= {"sh", "python"}
    assert {b.needs for b in BLOCKS} <= {None, "coordinator"}


def _scratch(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    return work


def _start_coordinator(spawn: Spawn, tmp_path: Path) -> str:
    flags = ["--open-enrollment", "--min-clients", "1", "--inner-steps", "20"]
    _, address = start_serve(spawn, tmp_path / "coordinator.log", *flags)
    return address


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_readme_block_runs(block: Block, spawn: Spawn, tmp_path: Path) -> None:
    work = _scratch(tmp_path)
    code = block.code
    if block.needs == "coordinator":
        code = code.replace(README_ADDRESS, _start_coordinator(spawn, tmp_path))
    if block.lang == "sh":
        argv = ["bash", "-euo", "pipefail", "-c", code]
    else:
        argv = [str(work / ".venv/bin/python"), "-c", code]

    result = subprocess.run(
        argv, cwd=work, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )

    assert result.returncode == 0, (
        f"README block under '{block.heading}' failed:\n{code}\n"
        f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
