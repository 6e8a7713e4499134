"""MLflow tracking: candidates, ensembles, tuned variants and submissions read back from a temporary
sqlite store with mlflow.search_runs carry the leaderboard's and the log's numbers; each result is
logged once; a missing mlflow is one note and a broken store one warning, never a lost submission."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pandas as pd
import pytest

from competition.errors import ConfigError
from competition.results import tracking
from competition.workspace.config import TrackingConfig, load_config, parse_config

TRACKED = '\n[tracking]\nmlflow = "sqlite:///mlruns.db"\n'
WORKSPACE_CONFIG = ('[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n'
                    '[candidates.lead]\nkind = "lead"\nmax_turns = 2\n\n'
                    '[candidates.lead3]\nkind = "lead"\nturns = 3\n\n'
                    '[ensembles.mix]\nmembers = ["lead", "lead3"]\n')


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test starts as a new command would: no open store (notes said once: conftest)."""
    tracking._stores.clear()
    yield
    tracking._stores.clear()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An MLflow sqlite file with its tables made once (creating them takes MLflow ~7 s); each test
    copies it into its workspace."""
    mlflow = pytest.importorskip("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        path = tmp_path_factory.mktemp("store") / "mlruns.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        yield path


@pytest.fixture
def workspace(tmp_path, korean_rows, empty_store, monkeypatch):
    """12 training rows in 3 folds, 4 dev and 4 test rows, two lead candidates and an ensemble of
    them, tracked in mlruns.db beside competition.toml."""
    from conftest import write_workspace

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path / "ws", korean_rows, test, dev, WORKSPACE_CONFIG + TRACKED)
    shutil.copy(empty_store, root / "mlruns.db")
    return root


def runs_of(root, kind: str | None = None) -> pd.DataFrame:
    """The workspace experiment's runs as mlflow.search_runs returns them (one row per run)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=[root.name])
    finally:
        mlflow.set_tracking_uri(None)
    if kind is not None and len(runs):
        runs = runs[runs["tags.kind"] == kind]
    return runs.reset_index(drop=True)


def invoke(cli, root, *args):
    result = cli(list(args), cwd=root)
    assert result.exit_code == 0, result.output
    return result


def board_of(root, name: str) -> dict:
    from competition.results.cv import leaderboard

    return leaderboard(load_config(root / "competition.toml"), [name])[0]


def fold_oracle(root, name: str, fold: int) -> dict:
    """ROUGE F1 x 100 and final of fold `fold`'s OOF rows, scored here from the files."""
    from competition.data.loading import load_from_config, references
    from competition.text.metric import get_scorer
    from competition.data.predictions import fold_dir, read_predictions

    config = load_config(root / "competition.toml")
    oof = read_predictions(fold_dir(config, name, fold) / "oof.csv")
    labelled = load_from_config(config).train.set_index("fname").loc[oof["fname"]].reset_index()
    result = get_scorer("whitespace", config.metric.convention, config.metric.multi_ref).score(
        oof["summary"].tolist(), references(labelled))
    return {**{metric: value * 100 for metric, value in result.f1.items()}, "final": result.final}


# -- configuration --------------------------------------------------------------------------------

def test_off_by_default_and_a_bare_path_is_refused_with_the_fix(tmp_path):
    assert TrackingConfig().mlflow == ""
    config = parse_config({}, tmp_path / "competition.toml")
    assert tracking.tracking_uri(config) is None
    assert tracking.log_candidate(config, "lead") is None and tracking.log_submission(config, {}, "x.csv") is None
    assert not (tmp_path / "mlruns.db").exists()
    with pytest.raises(ConfigError, match=r"\[tracking\] mlflow = 'mlruns.db': give a tracking URI such as "
                                          r"\"sqlite:///mlruns.db\""):
        parse_config({"tracking": {"mlflow": "mlruns.db"}}, tmp_path / "competition.toml")


def test_a_relative_sqlite_store_lies_in_the_workspace_and_names_the_experiment(tmp_path):
    config = parse_config({"tracking": {"mlflow": "sqlite:///mlruns.db"}}, tmp_path / "ws" / "competition.toml")
    assert tracking.tracking_uri(config) == f"sqlite:///{tmp_path / 'ws' / 'mlruns.db'}"
    assert tracking.experiment_name(config) == "ws"
    named = parse_config({"tracking": {"mlflow": "sqlite:////abs/x.db", "experiment": "team"}}, tmp_path / "c.toml")
    assert tracking.tracking_uri(named) == "sqlite:////abs/x.db" and tracking.experiment_name(named) == "team"


def test_the_shipped_competition_toml_documents_every_tracking_key():
    from pathlib import Path

    from workspace.test_config import section_lines

    text = (Path(__file__).resolve().parents[2] / "competition.toml").read_text(encoding="utf-8")
    lines = section_lines(text, "tracking")
    for field in dataclasses.fields(TrackingConfig):
        line = next((line for line in lines if line.startswith(f"{field.name} =")), None)
        assert line is not None and "#" in line.split("=", 1)[1], f"[tracking] {field.name} undocumented"


# -- candidates ---------------------------------------------------------------------------------

def test_a_candidate_run_carries_the_leaderboard_numbers_per_fold_scores_and_timings(workspace, cli):
    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run", "lead")
    runs = runs_of(workspace, "candidate")
    assert len(runs) == 1
    run = runs.iloc[0]
    entry = board_of(workspace, "lead")
    assert run["tags.source"] == "lead" and run["status"] == "FINISHED"
    assert run["tags.config_hash"] == entry["config_hash"] != ""
    for metric in ("rouge1", "rouge2", "rougeL", "final"):
        assert run[f"metrics.oof_{metric}"] == pytest.approx(entry["oof"][metric])
    assert [run["metrics.oof_ci95_low"], run["metrics.oof_ci95_high"]] == pytest.approx(entry["ci95"])
    matched = entry["test_matched"]
    assert run["metrics.matched_final"] == pytest.approx(matched["final"])
    assert run["metrics.matched_ess"] == pytest.approx(matched["ess"])
    assert [run["metrics.matched_ci95_low"], run["metrics.matched_ci95_high"]] == pytest.approx(matched["ci95"])
    assert run["metrics.dev_final"] == pytest.approx(entry["dev_final"])
    for fold in range(3):
        oracle = fold_oracle(workspace, "lead", fold)
        for metric, value in oracle.items():
            assert run[f"metrics.fold_{fold}/{metric}"] == pytest.approx(value)
        assert run[f"metrics.fold_{fold}/fit_s"] >= 0 and run[f"metrics.fold_{fold}/train_rows"] == 8
    # On the leaderboard's scale: the per-fold scores average to its fold means.
    for metric in ("rouge1", "rougeL", "final"):
        assert sum(run[f"metrics.fold_{fold}/{metric}"] for fold in range(3)) / 3 == pytest.approx(
            entry["fold_mean"][metric])
    assert run["params.max_turns"] == "2" and run["params.kind"] == "lead"
    assert run["params.cv.k"] == "3" and run["params.metric.tokenizer"] == "whitespace"
    # A second run of a current candidate logs nothing new.
    invoke(cli, workspace, "run", "lead")
    assert len(runs_of(workspace, "candidate")) == 1


def test_a_result_noted_as_logged_is_not_looked_up_while_the_store_is_unchanged(workspace, cli, monkeypatch):
    """A second `run` of a current candidate, or a second submit of a logged row, opens no store (the
    ~3 s of importing mlflow) and returns the run already logged."""
    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run", "lead")
    logged = runs_of(workspace, "candidate").iloc[0]["run_id"]
    opened = []
    monkeypatch.setattr(tracking, "_open", lambda config: opened.append(config) or tracking._stores[None])
    config = load_config(workspace / "competition.toml")
    assert tracking.log_candidate(config, "lead") == logged
    result = invoke(cli, workspace, "run", "lead")
    assert opened == [] and "tracking:" not in result.output
    assert len(runs_of(workspace, "candidate")) == 1


def test_a_run_deleted_in_mlflow_or_a_removed_store_is_logged_again(workspace, cli):
    """The notes are trusted only while nothing else wrote the store: a run deleted in `mlflow ui`
    (a write to the store) or a store removed and made again is looked up, and the result logged."""
    from mlflow import MlflowClient

    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run", "lead")
    first = runs_of(workspace, "candidate").iloc[0]["run_id"]
    MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns.db'}").delete_run(first)
    assert len(runs_of(workspace, "candidate")) == 0
    tracking._stores.clear()
    invoke(cli, workspace, "run", "lead")
    again = runs_of(workspace, "candidate")
    assert len(again) == 1 and again.iloc[0]["run_id"] != first

    config = load_config(workspace / "competition.toml")
    key, run_id = tracking._notes_path(config).read_text(encoding="utf-8").splitlines()[-1].split("\t")
    assert tracking._noted_run(config, key) == run_id == again.iloc[0]["run_id"]
    (workspace / "mlruns.db").unlink()
    assert tracking._noted_run(config, key) is None


def test_training_curves_and_a_result_made_before_tracking_was_on(tmp_path, korean_rows, empty_store, cli):
    """A candidate run without tracking is logged later, with fold_K/work/train.json as loss curves."""
    from conftest import write_workspace

    from competition.data.predictions import fold_dir

    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path / "later", korean_rows, test, None, WORKSPACE_CONFIG)
    invoke(cli, root, "folds", "build")
    invoke(cli, root, "run", "lead")
    assert not (root / "mlruns.db").exists()
    config = load_config(root / "competition.toml")
    losses = [2.5, 1.75, 1.25]
    work = fold_dir(config, "lead", 1) / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.json").write_text(json.dumps({"losses": losses, "global_step": 30}), encoding="utf-8")
    with open(root / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write(TRACKED)
    shutil.copy(empty_store, root / "mlruns.db")
    invoke(cli, root, "run", "lead")  # nothing to re-run; the result is logged now
    runs = runs_of(root, "candidate")
    assert len(runs) == 1 and runs.iloc[0]["metrics.fold_1/global_step"] == 30

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    history = client.get_metric_history(runs.iloc[0]["run_id"], "fold_1/train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(enumerate(losses))
    artifacts = {a.path for a in client.list_artifacts(runs.iloc[0]["run_id"])}
    assert {"meta.json", "fold_1"} <= artifacts
    assert (root / tracking.ARTIFACTS_DIR).is_dir()  # beside the sqlite file, not in the current folder


# -- ensembles, submissions, leaderboard scores -------------------------------------------------

def test_ensemble_submission_and_leaderboard_scores(workspace, cli):
    from mlflow import MlflowClient

    from competition.submit.submission import read_log

    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run")
    invoke(cli, workspace, "ensemble", "mix")
    ensembles = runs_of(workspace, "ensemble")
    assert len(ensembles) == 1 and len(runs_of(workspace, "candidate")) == 2
    ensemble = ensembles.iloc[0]
    entry = board_of(workspace, "mix")
    assert ensemble["metrics.oof_final"] == pytest.approx(entry["oof"]["final"])
    assert ensemble["params.method"] == "mbr" and json.loads(ensemble["params.members"]) == ["lead", "lead3"]
    weights = json.loads((workspace / "runs" / "mix" / "meta.json").read_text(encoding="utf-8"))["weights"]
    assert {m: ensemble[f"metrics.weight/{m}"] for m in weights} == pytest.approx(weights)

    invoke(cli, workspace, "submit", "mix", "--note", "first try")
    config = load_config(workspace / "competition.toml")
    row = read_log(config).iloc[0].to_dict()
    submissions = runs_of(workspace, "submission")
    assert len(submissions) == 1
    logged = submissions.iloc[0]
    assert logged["tags.mlflow.runName"] == "0001-mix"
    assert logged["tags.sha256"] == row["sha256"] and logged["tags.note"] == "first try"
    assert logged["tags.source_run_id"] == ensemble["run_id"]
    for column in ("oof_rouge1", "oof_final", "matched_final", "dev_final"):
        assert logged[f"metrics.{column}"] == pytest.approx(float(row[column]))
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns.db'}")
    copy = client.download_artifacts(logged["run_id"], "submission/0001-mix.csv", str(workspace / "download"))
    assert open(copy, "rb").read() == (workspace / "submissions" / "0001-mix.csv").read_bytes()

    invoke(cli, workspace, "lb", "record", "1", "--public", "21.5")
    invoke(cli, workspace, "lb", "record", "1", "--public", "22.25", "--private", "20")
    logged = runs_of(workspace, "submission").iloc[0]
    assert logged["metrics.public"] == 22.25 and logged["metrics.private"] == 20
    history = client.get_metric_history(logged["run_id"], "public")
    assert sorted(m.value for m in history) == [21.5, 22.25]


def test_scores_recorded_for_a_submission_made_before_tracking_was_on(workspace, cli):
    from competition.submit.submission import read_log

    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(TRACKED, ""), encoding="utf-8")
    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run", "lead")
    invoke(cli, workspace, "submit", "lead")
    assert len(runs_of(workspace)) == 0
    toml.write_text(toml.read_text(encoding="utf-8") + TRACKED, encoding="utf-8")
    invoke(cli, workspace, "lb", "record", "0001", "--public", "18.5")
    logged = runs_of(workspace, "submission")
    assert len(logged) == 1 and logged.iloc[0]["metrics.public"] == 18.5
    row = read_log(load_config(toml)).iloc[0]
    assert logged.iloc[0]["metrics.oof_final"] == pytest.approx(float(row["oof_final"]))


def test_a_tuned_variant_shows_its_setting_and_trials(workspace, cli):
    """log_tune on a stand-in NAME@tuned (the lead's files): the chosen setting overrides the base's
    params, and every trial's finals are a series by trial number."""
    from competition.data.predictions import run_dir
    from competition.stages.search import Trial

    invoke(cli, workspace, "folds", "build")
    invoke(cli, workspace, "run", "lead")
    config = load_config(workspace / "competition.toml")
    shutil.copytree(run_dir(config, "lead"), run_dir(config, "lead@tuned"))
    trials = [Trial(0, {"turns": 0}, {0: 30.0}, 30.0, 31.0), Trial(1, {"turns": 2}, {0: 33.0}, 33.0, 32.5),
              Trial(2, {"turns": 1}, {0: 20.0}, 20.0)]
    assert tracking.log_tune(config, "lead", trials, trials[1], 31.5, 31.0) is not None
    tuned = runs_of(workspace, "tuned")
    assert len(tuned) == 1
    run = tuned.iloc[0]
    assert run["tags.source"] == "lead@tuned" and run["tags.tuned_from"] == "lead"
    assert run["params.turns"] == "2" and run["params.max_turns"] == "2"
    assert run["metrics.nested_final"] == 31.5 and run["metrics.untuned_final"] == 31.0 and run["metrics.trials"] == 3
    assert run["metrics.oof_final"] == pytest.approx(board_of(workspace, "lead@tuned")["oof"]["final"])

    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns.db'}").get_metric_history(
        run["run_id"], "trial/subsample_final")
    assert sorted((m.step, m.value) for m in history) == [(0, 30.0), (1, 33.0), (2, 20.0)]


# -- never in the way ---------------------------------------------------------------------------

def test_mlflow_not_installed_is_one_note_and_the_run_goes_on(workspace, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    invoke(cli, workspace, "folds", "build")
    result = invoke(cli, workspace, "run")  # two candidates: one note
    notes = [line for line in result.stderr.splitlines() if line.startswith("tracking:")]
    assert notes == ["tracking: [tracking] mlflow = 'sqlite:///mlruns.db' but mlflow is not installed: "
                     "pip install -e '.[tracking]' (or set mlflow = \"\" to turn tracking off)"]
    assert (workspace / "runs" / "lead" / "test.csv").exists() and (workspace / "runs" / "lead3" / "test.csv").exists()


def test_a_broken_store_is_one_warning_and_the_submission_is_kept(workspace, cli):
    from competition.submit.submission import read_log

    invoke(cli, workspace, "folds", "build")
    (workspace / "mlruns.db").write_bytes(b"this is not an sqlite database" * 100)
    runs = invoke(cli, workspace, "run", "lead")
    assert (workspace / "runs" / "lead" / "test.csv").exists()
    result = invoke(cli, workspace, "submit", "lead", "--json")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("tracking:")]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: submission 0001 not logged to MLflow (")
    assert "submissions/log.csv are the record" in warnings[0]
    assert [line for line in runs.stderr.splitlines() if line.startswith("tracking:")][0].startswith(
        "tracking: candidate 'lead' not logged to MLflow (")
    assert json.loads(result.stdout)["id"] == "0001"
    assert read_log(load_config(workspace / "competition.toml"))["file"].tolist() == ["0001-lead.csv"]
    assert (workspace / "submissions" / "0001-lead.csv").exists()
