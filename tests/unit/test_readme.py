"""The README and docs/ run as written.

Each ```bash and ```python block of the documents below runs, in order, in a scratch copy of the
repository's working directory: ``configs/`` copied in, and ``demo_out/`` made first by
``raymesh demo --out demo_out`` (what ``make demo`` runs). The documents use paths relative to
the repository root (``sqlite://demo_out/graph.sqlite``, ``configs/demo.yaml``), so the blocks run
there unchanged. ``raymesh`` and ``python`` are this environment's (its bin folder first on PATH).

A block that cannot run offline on the demo data (a Ray cluster, Bigtable, Kubernetes, an install)
carries the comment ``<!-- readme-test: skip: REASON -->`` on the line before its fence, and the
reason names what covers it instead. Blocks without a language are sample output or synopses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# docs/viewing.md documents `raymesh view`, a server that runs until stopped: its own tests cover it.
DOCUMENTS = ["README.md", "docs/formats.md", "docs/runtime.md", "docs/geometry.md", "docs/performance.md"]
RUN = {"bash", "sh", "shell", "python"}
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>.+?)\s*-->\s*$", re.S)


@dataclass
class Block:
    document: str
    line: int
    language: str
    code: str
    skip: str | None

    def __str__(self) -> str:
        return f"{self.document}:{self.line} ({self.language})"


def blocks(document: str) -> list[Block]:
    lines = (REPO / document).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)", lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        before = "\n".join(lines[max(0, start - 3):start])
        skip = SKIP.search(before)
        out.append(Block(document, start + 1, language, "\n".join(lines[start + 1:j]) + "\n",
                         skip.group("reason") if skip else None))
        i = j + 1
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch repository root: configs/ and a demo_out/ made as `make demo` makes it."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "configs", root / "configs")
    env = _env()
    proc = subprocess.run(["raymesh", "demo", "--out", "demo_out"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)  # the blocks run here, not on whatever cluster a shell points at
    return env


def _run(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    if block.language == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documents_run_as_written(document, workdir):
    ran = 0
    for block in blocks(document):
        if block.language not in RUN or block.skip:
            continue
        proc = _run(block, workdir)
        assert proc.returncode == 0, (f"{block} failed with status {proc.returncode}:\n{block.code}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        assert "Traceback" not in proc.stderr, f"{block}:\n{proc.stderr[-3000:]}"
        ran += 1
    if document == "README.md":
        assert ran >= 8, "the README's runnable blocks were found and run"


def test_every_block_runs_or_says_why_not():
    for document in DOCUMENTS:
        for block in blocks(document):
            assert block.language in RUN | {""}, f"{block}: a block is bash, python, or output without a language"
            if block.skip:
                assert block.language in RUN, f"{block}: only runnable blocks need a reason to be skipped"
                assert len(block.skip) > 20, f"{block}: say why it cannot run here and what covers it"


def test_skipped_blocks_name_what_covers_them():
    """A skipped block points at the test that runs what it shows, and that test exists."""
    for document in DOCUMENTS:
        for block in blocks(document):
            for path in re.findall(r"tests/\S+?\.py", block.skip or ""):
                assert (REPO / path).exists(), f"{block} names {path}, which does not exist"


def test_the_two_commands_are_what_the_readme_says():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^DEMO_OUT \?= demo_out$", makefile, re.M)
    assert re.search(r"^demo: venv\n\t@?\$\(VENV\)/bin/raymesh demo --out \$\(DEMO_OUT\)$", makefile, re.M)
    assert re.search(r"^test: venv\n\t@?\$\(PY\) -m pytest -q (--durations=\d+ )?tests$", makefile, re.M)
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_the_readme_python_reading_example_defines_what_it_uses():
    """The CloudVolume example once used an undefined name: each Python block runs on its own."""
    readme = [b for b in blocks("README.md") if b.language == "python"]
    assert any("CloudVolume" in b.code for b in readme)
    for block in readme:
        compile(block.code, str(block), "exec")
