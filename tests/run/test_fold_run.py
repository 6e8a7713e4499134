"""One fold's run: the rows a fold trains on (its augmented rows only where their source is in
its training folds) and augmentation fnames checked before any fold runs."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import LEAD_AND_RETRIEVAL as CONFIG, real_dev_workspace, write_workspace

from competition.data.folds import build_folds, load_folds
from competition.data.loading import load_from_config
from competition.data.predictions import load_oof, read_meta, run_dir
from competition.run.runner import run_candidates
from competition.workspace.config import load_config


@pytest.fixture
def workspace(tmp_path, shared_data):
    return real_dev_workspace(tmp_path, shared_data)


def folded_workspace(root, korean_rows, config_text: str, with_dev: bool = False):
    """The Korean fixture rows as a workspace in `root` with its folds built: the last 4 rows, renamed,
    are its test (with_dev: the first 3 its dev); returns its config."""
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    dev = korean_rows.head(3).assign(fname=lambda f: "dev_" + f["fname"]) if with_dev else None
    write_workspace(root, korean_rows, test, dev, config_text)
    config = load_config(root / "competition.toml")
    build_folds(config, load_from_config(config).train)
    return config


def test_augmented_rows_train_only_the_folds_their_source_is_in(workspace):
    from competition.stages.augment import speaker_swap, write_augmented

    config = load_config(workspace / "competition.toml")
    train = load_from_config(config).train
    swapped, _ = speaker_swap(train)
    write_augmented(swapped, workspace / "data" / "augmented" / "swap.csv")
    (workspace / "competition.toml").write_text(
        CONFIG.replace('kind = "retrieval"', 'kind = "retrieval"\naugmentations = ["data/augmented/swap.csv"]'),
        encoding="utf-8")
    config = load_config(workspace / "competition.toml")
    run_candidates(config, ["retrieval"], progress=False)
    meta = read_meta(run_dir(config, "retrieval") / "fold_0" / "meta.json")
    assert meta["rows"]["train"] == 120  # 60 training rows + their 60 swaps, none of the held-out 30
    # A held-out dialogue's own swap would be its nearest neighbour and give back its own summary.
    own = train.set_index("fname")["summary"]
    oof = load_oof(config, "retrieval")
    assert (oof["summary"].to_numpy() != own.loc[oof["fname"]].to_numpy()).mean() > 0.9

    write_augmented(swapped.head(10), workspace / "data" / "augmented" / "swap.csv")
    assert run_candidates(config, ["retrieval"], progress=False)["retrieval"]["ran"] == [0, 1, 2]


def test_no_fold_trains_on_a_row_derived_from_its_held_out_dialogues(tmp_path, korean_rows, monkeypatch):
    """The leakage rule end to end, for every fold, on the Korean fixture rows (never skipped)."""
    from competition.stages.augment import speaker_swap, write_augmented
    from competition.data.augmented import read_augmented
    from competition.candidates.retrieval import RetrievalCandidate

    config = folded_workspace(tmp_path, korean_rows, (
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n[candidates.retrieval]\n'
        'kind = "retrieval"\naugmentations = ["data/augmented/swap.csv", "data/augmented/synthetic.csv"]\n'))
    root = config.root
    write_augmented(speaker_swap(korean_rows)[0], root / "data" / "augmented" / "swap.csv")
    write_augmented(pd.DataFrame([{"fname": "synthetic_0", "source_fname": "", "augmentation": "synthetic",
                                   "dialogue": "#Person1#: 새 대화야.\n#Person2#: 응, 그래.", "summary": "새 요약",
                                   "topic": "일상"}]), root / "data" / "augmented" / "synthetic.csv")

    trained: dict[int, list[str]] = {}
    original_fit = RetrievalCandidate.fit

    def spy_fit(self, train_rows, fold):
        if fold is not None:
            trained[fold] = train_rows["fname"].tolist()
        return original_fit(self, train_rows, fold)

    monkeypatch.setattr(RetrievalCandidate, "fit", spy_fit)
    run_candidates(config, ["retrieval"], progress=False)

    source_of = read_augmented(root / "data" / "augmented" / "swap.csv").set_index("fname")["source_fname"]
    fold_of = load_folds(config).set_index("fname")["fold"]
    assert sorted(trained) == [0, 1, 2]
    for fold, fnames in trained.items():
        held_out = set(fold_of[fold_of == fold].index)
        training = set(fold_of[fold_of != fold].index)
        swaps = [f for f in fnames if f in source_of.index]
        assert not set(fnames) & held_out, f"fold {fold} trained on a held-out row"
        assert not set(source_of[swaps]) & held_out, f"fold {fold} trained on a swap of a held-out row"
        assert set(source_of[swaps]) == training  # every allowed swap was used: the check is not vacuous
        assert "synthetic_0" in fnames
        assert len(fnames) == 2 * len(training) + 1
        assert read_meta(run_dir(config, "retrieval") / f"fold_{fold}" / "meta.json")["rows"]["train"] == len(fnames)


def test_an_augmented_fname_clash_is_refused_before_any_fold_runs(tmp_path, korean_rows, cli):
    """A clash with a row held out in fold 0 passes fold 0's own check (that row is not among its
    training rows); a clash with a test fname passes every fold's. Both are refused up front."""
    from competition.stages.augment import speaker_swap, write_augmented

    config = folded_workspace(tmp_path, korean_rows, (
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n[candidates.retrieval]\n'
        'kind = "retrieval"\naugmentations = ["data/augmented/swap.csv"]\n'))
    root = config.root
    fold_of = load_folds(config).set_index("fname")["fold"]
    held_out_in_fold_0 = fold_of[fold_of == 0].index[0]
    swapped = speaker_swap(korean_rows)[0]
    for clash, place in ((held_out_in_fold_0, "the labelled data"), ("test_f_8", "the test data")):
        write_augmented(swapped.assign(fname=[clash] + swapped["fname"].tolist()[1:]),
                        root / "data" / "augmented" / "swap.csv")
        result = cli(["run", "retrieval"], cwd=root)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"augmented fname '{clash}' is in both {place} and " in result.output
        assert not (root / "runs").exists()
    write_augmented(swapped, root / "data" / "augmented" / "swap.csv")  # the fix: fnames of their own
    assert cli(["run", "retrieval"], cwd=root).exit_code == 0
    assert sorted(p.name for p in (root / "runs" / "retrieval").glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]



def test_each_stage_of_a_fold_names_its_progress(tmp_path, korean_rows, monkeypatch, capsys):
    """`run` says which fold and stage long work belongs to (training, OOF, test, dev), and the
    refit model's stages say "refit": a model's bars read "NAME fold K OOF generate: 40/150 rows"."""
    from competition.candidates.retrieval import RetrievalCandidate
    from competition.progress import progress

    config = folded_workspace(tmp_path, korean_rows, (
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 2\nbootstrap = 100\ntest_strategy = "refit"\n\n'
        '[candidates.retrieval]\nkind = "retrieval"\n'), with_dev=True)
    original_fit, original_predict = RetrievalCandidate.fit, RetrievalCandidate.predict

    def fit_with_a_bar(self, train_rows, fold):
        with progress(total=1, desc="training", unit="steps") as bar:
            bar.update(1)
        return original_fit(self, train_rows, fold)

    def predict_with_a_bar(self, rows):
        with progress(total=len(rows), desc="generate") as bar:
            bar.update(len(rows))
        return original_predict(self, rows)

    monkeypatch.setattr(RetrievalCandidate, "fit", fit_with_a_bar)
    monkeypatch.setattr(RetrievalCandidate, "predict", predict_with_a_bar)
    capsys.readouterr()
    run_candidates(config, ["retrieval"], progress=False)
    named = [line.split(":")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("retrieval ")]
    assert named == ["retrieval fold 0 training", "retrieval fold 0 OOF generate", "retrieval fold 0 test generate",
                     "retrieval fold 0 dev generate",
                     "retrieval fold 1 training", "retrieval fold 1 OOF generate", "retrieval fold 1 test generate",
                     "retrieval fold 1 dev generate",
                     "retrieval refit training", "retrieval refit test generate", "retrieval refit dev generate"]


def test_a_candidate_is_built_with_everything_the_run_gives_it(tmp_path, korean_rows):
    """make_candidate passes, in the constructor: [metric], the texts of every split, --refresh, the
    rows a validation split keeps together and, to a kind that uses the objective, its row weights."""
    import dataclasses

    from competition.run.fold_run import make_candidate, prepare

    config = folded_workspace(tmp_path, korean_rows, (
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\n\n[candidates.lead]\nkind = "lead"\n\n'
        '[candidates.retrieval]\nkind = "retrieval"\n'))
    context = dataclasses.replace(prepare(config), refresh=True)
    lead = make_candidate(context, "lead", tmp_path / "lead")
    assert lead.inputs.metric == config.metric and lead.inputs.refresh and lead.inputs.row_groups is not None
    assert set(korean_rows.tail(4)["dialogue"]) | set(korean_rows["summary"]) <= set(lead.inputs.vocabulary_texts)
    assert context.objective_row_weights is not None  # [cv] objective = "test_matched"
    pd.testing.assert_series_equal(lead.inputs.row_weights, context.objective_row_weights)
    assert make_candidate(context, "retrieval", tmp_path / "retrieval").inputs.row_weights is None  # no objective
