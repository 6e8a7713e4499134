"""The README and the guide as a new user follows them: every ```bash block of
README.md, then of docs/guide.md, runs line by line, in order, in a fresh folder, with this
environment's `competition` on PATH (as `source .venv/bin/activate` puts it there).

A line that cannot run in a fresh workspace on a CPU (it needs the network, a GPU, a model's
weights or server, the real competition files, or the repository clone itself) carries the marker
`[walk skips: REASON]` in its comment, so every skip is visible in the docs; nothing else is
skipped. A new command line in either document runs here unless it carries the marker."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/guide.md")
SKIP = re.compile(r"\[walk skips: ([^\]]*)\]")


def bash_lines(doc: str) -> list[tuple[int, str]]:
    """(line number, command) of every line of every ```bash block, continuation lines joined."""
    lines, inside, pending = [], False, None
    for number, line in enumerate((REPO_ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = line.strip() == "```bash" if not inside else False
            continue
        if not inside or not line.strip() or line.lstrip().startswith("#"):
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + "\n" + line)
        else:
            pending = (number, line)
        if not line.endswith("\\"):
            lines.append(pending)
            pending = None
    return lines


def walk_script(doc: str) -> tuple[str, list[str]]:
    """A bash script running the doc's lines in order (each announced, the first failure naming its
    line), and the skipped lines with their reasons."""
    script, skipped = ["set -eo pipefail", "trap 'echo \"walk: FAILED at $WALK_LINE\" >&2' ERR"], []
    for number, command in bash_lines(doc):
        marker = SKIP.search(command)
        if marker:
            skipped.append(f"{doc}:{number}: {marker.group(1)}")
            continue
        where = f"{doc}:{number}: {command}"
        script += [f"WALK_LINE={shlex.quote(where)}", 'echo "walk: $WALK_LINE"', command]
    return "\n".join(script) + "\n", skipped


def test_every_skip_names_its_reason_and_the_walk_runs_the_rest():
    """The marker is the only way out of the walk, and each one says why."""
    for doc in DOCS:
        lines = bash_lines(doc)
        assert lines, f"no ```bash block in {doc}"
        for number, command in lines:
            if "walk skips" in command:
                marker = SKIP.search(command)
                assert marker and len(marker.group(1).strip()) > 5, f"{doc}:{number}: write [walk skips: REASON]"
        script, skipped = walk_script(doc)
        assert len(skipped) < len(lines) / 2, skipped  # the docs are mostly walked, not skipped
    assert any("competition ensemble mbr_all" in command for _, command in bash_lines("README.md"))


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_run_as_written_in_a_fresh_folder(doc, tmp_path):
    """Every command line of the doc runs as written, in order, in a fresh folder (`competition` on
    PATH after `make submit`, the shipped competition.toml, the guide's `score`, `folds build
    --include-dev`, `submit ... --data ../other/data` and `diff 3 5` lines included)."""
    script, skipped = walk_script(doc)
    folder = tmp_path / "walk"
    folder.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, (f"{doc} does not run as written (lines needing the network, a GPU or a "
                                    f"model take a [walk skips: REASON] marker):\n{output[-6000:]}")
    walked = [line for line in result.stdout.splitlines() if line.startswith("walk: ")]
    assert len(walked) == len(bash_lines(doc)) - len(skipped)
    print(f"{doc}: {len(walked)} lines run; skipped:\n" + "\n".join(skipped))
