"""A fresh workspace: `competition init`, the bundled sample with its licence, and the whole flow on
it when data/ is absent (what `make submit` does on a fresh clone)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from competition.workspace import SAMPLE_DIR, TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_template_is_the_repository_config():
    """`init` writes the package's copy of competition.toml: it must not drift from the documented one."""
    assert TEMPLATE.read_text(encoding="utf-8") == (REPO_ROOT / "competition.toml").read_text(encoding="utf-8"), \
        "run: cp competition.toml competition/templates/competition.toml"


def test_the_sample_is_valid_and_carries_its_licence():
    from competition.data import load_data

    data = load_data(SAMPLE_DIR)
    assert (len(data.train), len(data.dev), len(data.test)) == (400, 99, 200)
    assert data.sample_submission["fname"].tolist() == data.test["fname"].tolist()
    assert not set(data.train["fname"]) & set(data.dev["fname"])
    licence = (SAMPLE_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "CC BY-NC-SA 4.0" in licence and "DialogSum" in licence
    assert "Chen" in (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")


def test_init_writes_a_workspace_and_refuses_to_overwrite(tmp_path, cli):
    folder = tmp_path / "team"
    result = cli(["init", folder, "--example", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["example"] is True
    for path in ("competition.toml", "folds", "submissions", "data/README.md", "data/train.csv",
                 "data/sample_submission.csv", "data/SAMPLE-LICENSE", ".gitignore"):
        assert (folder / path).exists(), path
    assert (folder / "competition.toml").read_text(encoding="utf-8") == TEMPLATE.read_text(encoding="utf-8")
    assert "sample_submission.csv" in (folder / "data" / "README.md").read_text(encoding="utf-8")
    checked = cli(["data", "check", "--no-tokens"], cwd=folder)
    assert checked.exit_code == 0 and "train 400 rows" in checked.output

    again = cli(["init", folder])
    assert again.exit_code == 2 and "already exists: pass --force" in again.output
    mine = tmp_path / "mine.toml"
    mine.write_text("[cv]\nk = 3\n", encoding="utf-8")
    assert cli(["init", folder, "--force", "--config", mine]).exit_code == 0
    assert (folder / "competition.toml").read_text(encoding="utf-8") == "[cv]\nk = 3\n"
    bad = cli(["init", tmp_path / "other", "--config", tmp_path / "absent.toml"])
    assert bad.exit_code == 2 and not (tmp_path / "other" / "competition.toml").exists()


@pytest.mark.slow
def test_pipeline_runs_on_the_bundled_sample_without_data(tmp_path, cli):
    """A fresh clone has no data/: pipeline says it uses the sample (one line, how to point at the
    real files) and runs the whole flow (before: it stopped with "data folder not found")."""
    (tmp_path / "competition.toml").write_text(TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    result = cli(["pipeline"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: no ")]
    assert len(notes) == 1 and "bundled sample" in notes[0] and "DATA=" in notes[0]
    submitted = pd.read_csv(next((tmp_path / "submissions").glob("0001-*.csv")), dtype=str, keep_default_na=False)
    assert len(submitted) == 200 and (submitted["summary"] != "").all()
    assert "R1" in result.stdout and "(the bundled sample" in result.stdout
    # An explicit folder that is absent is still an error, never silently the sample.
    missing = cli(["data", "check", "--data", tmp_path / "nowhere"], cwd=tmp_path)
    assert missing.exit_code == 2 and "nowhere" in missing.output
