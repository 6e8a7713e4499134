"""A fresh workspace: `competition init`, the bundled sample with its licence, and the whole flow on
it when data/ is absent (what `make submit` does on a fresh clone)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from competition.data.loading import SAMPLE_DIR
from competition.workspace.create import TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_template_is_the_repository_config():
    """`init` writes the package's copy of competition.toml: it must not drift from the documented one."""
    assert TEMPLATE.read_text(encoding="utf-8") == (REPO_ROOT / "competition.toml").read_text(encoding="utf-8"), \
        "run: cp competition.toml competition/templates/competition.toml"


def _shown_values(text: str) -> list[tuple[str, str, str, str]]:
    """(table, key, TOML value, comment) of every uncommented `key = value` line of a config file."""
    import re

    table, found = "", []
    for line in text.splitlines():
        header = re.fullmatch(r"\[([\w.]+)\]\s*(#.*)?", line.strip())
        if header:
            table = header.group(1)
            continue
        match = re.fullmatch(r"(\w+) = (.+?)(?:\s+#\s*(.*))?", line.strip())
        if match and not line.startswith("#"):
            found.append((table, match.group(1), match.group(2), match.group(3) or ""))
    return found


def test_the_template_shows_the_defaults_or_says_which_it_changes():
    """The header says a value shown is the key's default unless its comment says "(default X)",
    and every value the template sets away from its default says so."""
    import dataclasses
    import re
    import tomllib

    from competition.candidates import params_class
    from competition.workspace.config import SECTIONS, CandidateConfig, EnsembleConfig

    text = TEMPLATE.read_text(encoding="utf-8")
    assert "a value shown is its default unless its comment says (default X)" in text.splitlines()[0]
    raw = tomllib.loads(text)
    checked = []
    for table, key, value, comment in _shown_values(text):
        section, _, name = table.partition(".")
        if section == "candidates":
            if key == "kind":
                continue
            fields = CandidateConfig if key in ("enabled", "augmentations", "seed") else \
                params_class(raw["candidates"][name]["kind"])
        else:
            fields = EnsembleConfig if section == "ensembles" else SECTIONS[section]
        field = {f.name: f for f in dataclasses.fields(fields)}[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = tomllib.loads(f"v = {value}")["v"]
        marked = re.search(r"\(default (\S+?)[:;)]", comment)
        if marked:
            assert shown != default and tomllib.loads(f"v = {marked.group(1)}")["v"] == default, (table, key)
        else:
            assert shown == default, f"[{table}] {key} = {value}: the default is {default!r}; show it or say (default ...)"
        checked.append((table, key))
    assert ("tracking", "mlflow") in checked and ("cv", "near_duplicates") in checked and len(checked) > 30


def test_the_sample_is_valid_and_carries_its_licence():
    from competition.data.loading import load_data

    data = load_data(SAMPLE_DIR)
    assert (len(data.train), len(data.dev), len(data.test)) == (400, 99, 200)
    assert data.sample_submission["fname"].tolist() == data.test["fname"].tolist()
    assert not set(data.train["fname"]) & set(data.dev["fname"])
    licence = (SAMPLE_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "CC BY-NC-SA 4.0" in licence and "DialogSum" in licence
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    assert "Chen" in readme
    # The README's id ranges are the files' own, first and last id included.
    for split, frame in (("train.csv", data.train), ("dev.csv", data.dev)):
        numbers = sorted(int(fname.split("_")[1]) for fname in frame["fname"])
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{split}`"))
        assert f"`dev_{numbers[0]}` .. `dev_{numbers[-1]}`" in row, row
        absent = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        assert all(f"`dev_{number}`" in row for number in absent), row


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


def test_run_and_submit_outside_a_workspace_say_how_to_make_one(tmp_path, cli):
    """In a folder without competition.toml, run and submit stop with one line saying how to make a
    workspace, and write nothing there."""
    for command in (["run"], ["run", "lead"], ["submit", "lead"]):
        result = cli(command, cwd=tmp_path)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [f"Error: no competition.toml in {tmp_path}: make a workspace "
                                                      f"with `competition init DIR --example` (or `competition init` "
                                                      f"here) and run the command in it, or pass --config PATH"]
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nothing written where it was typed


@pytest.mark.slow
def test_pipeline_runs_on_the_bundled_sample_without_data(tmp_path, cli):
    """A fresh clone has no data/: pipeline says it uses the sample (one line, how to point at the
    real files) and runs the whole flow; an explicit folder that is absent is still an error."""
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


ROUGE_KEYS = {"rouge1", "rouge2", "rougeL", "final", "precision", "recall", "f1", "dev_final", "dev_novel_final",
              "fold_final_mean", "ci95", "cv", "matched", "dev", "public", "private", "matched_ci95"}


def _rouge_numbers(value, key: str = "") -> list[tuple[str, float]]:
    """(key, number) for every ROUGE-valued number in a JSON document."""
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _rouge_numbers(v, k if k in ROUGE_KEYS else key)]
    if isinstance(value, list):
        return [found for v in value for found in _rouge_numbers(v, key)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key:
        return [(key, float(value))]
    return []


def test_every_score_is_on_the_0_100_scale(tmp_path, cli, korean_rows):
    """One unit: cv, score, the pipeline table and the log all show every ROUGE as 0-100."""
    from conftest import write_workspace

    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, dev, (
        '[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\nbootstrap = 100\n[candidates.lead]\nkind = "lead"\n'))
    for command in (["folds", "build"], ["run"], ["submit", "lead"], ["lb", "record", "1", "--public", "31.25"]):
        assert cli(command, cwd=root).exit_code == 0, command
    documents = {
        "cv": json.loads(cli(["cv", "--json"], cwd=root).stdout),
        "score": json.loads(cli(["score", root / "runs" / "lead" / "dev.csv", "--refs", root / "data" / "dev.csv",
                                 "--tokenizer", "whitespace", "--json"], cwd=root).stdout),
        "history": json.loads(cli(["history", "--json"], cwd=root).stdout)["submissions"],
    }
    log = pd.read_csv(root / "submissions" / "log.csv", dtype=str, keep_default_na=False).iloc[0]
    documents["log"] = {column.replace("oof_", "").replace("_ci95_low", "").replace("_ci95_high", "")
                        .replace("_final", "") or column: float(log[column])
                        for column in log.index if column.startswith(("oof_", "matched_", "dev_")) and log[column]}
    for name, document in documents.items():
        numbers = _rouge_numbers(document)
        assert len(numbers) >= 4, name
        for key, number in numbers:
            # A fraction (0 < x < 1) is the old unit; real scores of these outputs are well above 1.
            assert number == 0 or 1 <= number <= 100, (name, key, number)
    assert documents["score"]["rouge1"]["f1"] > 1 and documents["cv"][0]["oof"]["rouge2"] > 1
