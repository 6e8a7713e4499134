"""Decoding search on a tiny trained candidate: trials stored, resumable, a planted winning setting
found and written as NAME@tuned, nested score reported, NAME@tuned usable as a source."""
from __future__ import annotations

import gc
import json
import math
import shutil
import weakref

import numpy as np
import pytest

from competition.stages import search, tune as tuning
from tiny_models import run_through_cli

SPACE = ('{"num_beams": [1, 2], "length_penalty": [0.5, 1.0], "max_new_tokens": [6, 12], '
         '"length_control": ["fixed", "dynamic"], "length_scale": [0.5, 1.0]}')
T5_TABLE = ('kind = "seq2seq"\nmodel = "{model}"\nmax_steps = 4\nbatch_size = 4\nlearning_rate = 0.01\n'
            'max_new_tokens = 12\nnum_beams = 1\neval_batch_size = 8\n')
UNTUNED = {"num_beams": 1, "length_penalty": 1.0, "max_new_tokens": 12, "length_control": "fixed", "length_scale": 1.0}


def planting(predict, wins):
    """FoldModel.predict where settings that `wins` returns each labelled row's reference summary:
    a setting that must win the search. The model still generates for every setting (loads and
    releases as tune runs them); the test set, unlabelled, keeps the generated text."""
    def planted_predict(self, rows, setting):
        generated = predict(self, rows, setting)
        return list(rows["summary"]) if wins(setting) and "summary" in rows else generated

    return planted_predict


def test_nested_score_never_uses_the_held_out_fold():
    def trials(fold_0_of_trial_0: float) -> list[tuning.Trial]:
        # Subsample finals choose; full finals (all OOF rows of a fold) score the choice.
        return [tuning.Trial(0, {"a": 0}, {0: fold_0_of_trial_0, 1: 10.0, 2: 10.0}, 0.0,
                             full_fold_finals={0: fold_0_of_trial_0, 1: 12.0, 2: 8.0}),
                tuning.Trial(1, {"a": 1}, {0: 20.0, 1: 20.0, 2: 20.0}, 0.0, full_fold_finals={0: 22.0, 1: 18.0, 2: 30.0})]

    choices = tuning.nested_choices(trials(50.0), [0, 1, 2])
    # Held out 0: on folds 1-2 trial 1 wins (20 > 10), whatever trial 0 scores on fold 0.
    assert tuning.nested_choices(trials(99.0), [0, 1, 2])[0].number == choices[0].number == 1
    # Held out 1: trial 0 averages 30 on folds 0 and 2's subsample rows (trial 1: 20); same for held out 2.
    assert choices[1].number == 0 and choices[2].number == 0
    # Each choice is scored on the held-out fold's full rows, pooled by rows (2, 3, 5) like the OOF final:
    # (22 * 2 + 12 * 3 + 8 * 5) / 10, not the subsample finals (20, 10, 10) nor a mean of fold means (14).
    assert tuning.nested_score(choices, {0: 2, 1: 3, 2: 5}) == pytest.approx(12.0)
    choices[0].full_fold_finals = None
    with pytest.raises(ValueError, match="no full per-fold finals"):
        tuning.nested_score(choices, {0: 2, 1: 3, 2: 5})


def test_length_targets_follow_dialogue_length():
    dialogue = [10, 12, 14, 100, 110, 120] * 5
    summary = [3, 4, 5, 30, 32, 34] * 5
    targets = tuning.learn_length_targets(dialogue, summary, bins=2)
    assert targets.max_new[targets.bin_of(11)] <= 5 < 30 <= targets.max_new[targets.bin_of(115)]


def _independent_length_targets(workspace, model) -> dict[int, tuning.LengthTargets]:
    """Per fold, the length bins learnt from the other fold's rows counted by the model's tokenizer."""
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    train = pd.read_csv(workspace / "data" / "train.csv")
    targets = {}
    for fold in (0, 1):
        held_out = set(pd.read_csv(workspace / "runs" / "t5" / f"fold_{fold}" / "oof.csv")["fname"])
        rows = train[~train["fname"].isin(held_out)]
        count = [[len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rows[column]]
                 for column in ("dialogue", "summary")]
        targets[fold] = tuning.learn_length_targets(*count)
    return targets


@pytest.fixture(scope="module")
def trained_t5(tiny_t5, tmp_path_factory, cli):
    """korean_workspace's rows (train = the 12 fixture dialogues, 4 dev, 4 test) with the tiny T5
    trained as candidate t5 through `competition run` (k = 2), once for the module: tests copy it."""
    import pandas as pd

    from conftest import write_workspace
    from korean_fixture import DIALOGUES

    rows = pd.DataFrame(DIALOGUES, columns=["fname", "dialogue", "summary", "topic"])
    workspace = write_workspace(tmp_path_factory.mktemp("t5-trained"), rows,
                                rows.tail(4).assign(fname=lambda f: "test_" + f["fname"]),
                                rows.head(4).assign(fname=lambda f: "dev_" + f["fname"]))
    run_through_cli(cli, workspace, "t5", T5_TABLE.format(model=tiny_t5))
    return workspace


@pytest.fixture
def t5_workspace(trained_t5, tmp_path):
    """A copy of trained_t5 (file times kept, so its results stay current) for one test to change."""
    return shutil.copytree(trained_t5, tmp_path / "workspace")


@pytest.fixture(scope="module")
def resumed_tune(tiny_t5, trained_t5, tmp_path_factory, cli):
    """On a copy of trained_t5, a grid search killed after two trials, its trials file damaged as
    worse kills would leave it, and the search resumed to 5 trials with --confirm 2. The grid's
    third proposal after the untuned setting is planted to win (it returns each labelled row's
    reference summary), i.e. trial 5 of the resumed search."""
    from types import SimpleNamespace

    from competition.candidates.seq2seq import Seq2SeqCandidate

    workspace = shutil.copytree(trained_t5, tmp_path_factory.mktemp("tune") / "workspace")
    (workspace / "space.json").write_text(SPACE)
    grid_order = search.GridSearch(json.loads(SPACE), [tuning.Trial(0, UNTUNED, {}, 0.0)], seed=42)
    planted = [grid_order.ask() for _ in range(3)][-1]
    assert planted != UNTUNED
    original = planting(tuning.FoldModel.predict, lambda setting: setting == planted)
    calls = {"n": 0}

    def dying(self, rows, setting):  # two trials of 2 folds each, then what a kill looks like
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return original(self, rows, setting)

    # Each fold model's load records how many loaded models were still alive (tune releases each).
    loaded, alive_at_load = [], []
    real_load = Seq2SeqCandidate.load

    def spying_load(self):
        fresh = self._model is None
        model, tokenizer = real_load(self)
        if fresh:  # counted as tune left it: a model it released but still references counts as alive
            loaded.append(weakref.ref(model))
            alive_at_load.append(sum(ref() is not None for ref in loaded))
        return model, tokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning.FoldModel, "predict", dying)
        killed = cli(["tune", "t5", "--space", "space.json", "--trials", "5", "--subsample", "6"], cwd=workspace)
        trials_file = workspace / "runs" / "t5@tuned" / "trials.jsonl"
        header, *stored = trials_file.read_text().splitlines()
        # Worse kills: trial 1's line was lost (its number is now 3, after a gap), trial 4 cut mid-write.
        cut = '{"number": 4, "setting": {"num_beams": 2, "length_pen'
        trials_file.write_text("\n".join([header, stored[0], stored[1].replace('"number": 1', '"number": 3'), cut]))
        patch.setattr(tuning.FoldModel, "predict", original)
        patch.setattr(Seq2SeqCandidate, "load", spying_load)
        resumed = cli(["tune", "t5", "--space", "space.json", "--trials", "5", "--subsample", "6", "--confirm", "2",
                       "--json"], cwd=workspace)
    assert resumed.exit_code == 0, resumed.output
    gc.collect()
    lines = trials_file.read_text().splitlines()
    on_disk = {}  # number -> trial as last written (a confirmation rewrites its trial)
    for line in lines[1:]:
        if line != cut:
            on_disk[json.loads(line)["number"]] = json.loads(line)
    return SimpleNamespace(workspace=workspace, model=tiny_t5, planted=planted, killed=killed, stored=stored,
                           header=header, cut=cut, lines=lines, on_disk=on_disk, report=json.loads(resumed.stdout),
                           loaded=loaded, alive_at_load=alive_at_load, resumed_output=resumed.output)


@pytest.mark.slow
def test_a_killed_tune_keeps_the_trials_it_finished(resumed_tune):
    assert resumed_tune.killed.exit_code == 1 and "Aborted" in resumed_tune.killed.output  # click's answer to Ctrl-C
    assert len(resumed_tune.stored) == 2 and json.loads(resumed_tune.header)["inputs"]["subsample"] == 6


@pytest.mark.slow
def test_tunes_generation_lines_name_the_candidate_fold_and_rows(resumed_tune):
    """A fold model generating for tune says for what, like run's stages (it was a bare "generate:
    3 rows in 1 min 47 s" between minutes of silence on a real model)."""
    assert all(f"tune t5 fold {fold} subsample generate: 3 rows in" in resumed_tune.killed.output for fold in (0, 1))
    assert "tune t5 fold 0 OOF generate:" in resumed_tune.resumed_output  # confirming on every OOF row
    assert "\ngenerate:" not in resumed_tune.killed.output + resumed_tune.resumed_output


@pytest.mark.slow
def test_a_resumed_tune_numbers_new_trials_after_the_highest_stored_and_reads_past_a_cut_line(resumed_tune):
    report = resumed_tune.report
    numbers = [t["number"] for t in report["trials"]]
    assert numbers == [0, 3, 4, 5, 6]  # 2 resumed + 3 new after the highest stored number, none repeated
    assert len({json.dumps(t["setting"], sort_keys=True) for t in report["trials"]}) == 5
    assert report["trials"][0]["setting"] == UNTUNED  # the bar to beat is the first trial
    assert resumed_tune.cut in resumed_tune.lines  # alone on its line: every trial appended after it reads back
    assert sorted(resumed_tune.on_disk) == numbers


@pytest.mark.slow
def test_tune_holds_one_fold_model_at_a_time_and_releases_the_last(resumed_tune):
    assert len(resumed_tune.loaded) >= 2 and resumed_tune.alive_at_load == [1] * len(resumed_tune.loaded)
    assert all(ref() is None for ref in resumed_tune.loaded)  # released once the variant is written


@pytest.mark.slow
def test_the_planted_setting_wins_and_the_variant_on_disk_is_the_best_confirmed_trial(resumed_tune):
    """Of the --confirm 2 best trials by subsample final and the untuned one, the best on all OOF
    rows is written; its OOF files score that, recomputed with the metric."""
    import pandas as pd

    from competition.text.metric import score

    report, on_disk, workspace = resumed_tune.report, resumed_tune.on_disk, resumed_tune.workspace
    assert report["trials"][3]["number"] == 5 and report["trials"][3]["setting"] == resumed_tune.planted
    assert report["best"]["number"] == 5 and report["best"]["setting"] == resumed_tune.planted
    assert report["tuned_oof_final"] > report["untuned_oof_final"]
    ranked = sorted(on_disk.values(), key=lambda t: (-t["subsample_final"], t["number"]))
    confirmed = ranked[:2] + [on_disk[0]]
    best_confirmed = max(confirmed, key=lambda t: (t["full_final"], -t["number"]))
    assert report["best"]["number"] == best_confirmed["number"]
    tuned_oof = pd.concat([pd.read_csv(workspace / "runs" / "t5@tuned" / f"fold_{k}" / "oof.csv",
                                       keep_default_na=False) for k in (0, 1)])
    train = pd.read_csv(workspace / "data" / "train.csv", keep_default_na=False).set_index("fname")
    references = train.loc[tuned_oof["fname"], "summary"].tolist()
    on_disk_final = score(tuned_oof["summary"].tolist(), references).final
    assert on_disk_final == pytest.approx(best_confirmed["full_final"]) and on_disk_final > on_disk[0]["full_final"]
    assert tuned_oof["summary"].tolist() == references  # the planted setting's outputs


@pytest.mark.slow
def test_the_nested_score_chooses_on_the_other_fold_and_scores_the_held_out_rows(resumed_tune):
    """Each fold's choice is made on the other fold's subsample rows and scored on all its own OOF
    rows, pooled over rows like the tuned OOF final beside it; a grid search is strictly nested."""
    report, workspace = resumed_tune.report, resumed_tune.workspace
    assert report["nested_strict"] is True and report["nested_note"] is None
    trials = {t["number"]: t for t in report["trials"]}
    oof_rows = {fold: len((workspace / "runs" / "t5" / f"fold_{fold}" / "oof.csv").read_text().splitlines()) - 1
                for fold in (0, 1)}
    assert sum(oof_rows.values()) == report["oof_rows"] == 12
    pooled = 0.0
    for fold, other in (("0", "1"), ("1", "0")):
        choice = report["nested_choices"][fold]
        best_on_other = max(trials.values(), key=lambda t: (t["fold_finals"][other], -t["number"]))
        assert choice["number"] == best_on_other["number"]
        assert choice["held_out_final"] == trials[choice["number"]]["full_fold_finals"][fold]
        pooled += choice["held_out_final"] * oof_rows[int(fold)] / 12
    assert report["nested_oof_final"] == pytest.approx(pooled)
    best = trials[report["best"]["number"]]
    assert best["full_final"] == pytest.approx(sum(best["full_fold_finals"][str(k)] * oof_rows[k] / 12 for k in (0, 1)))


@pytest.mark.slow
def test_dynamic_length_budgets_are_learnt_from_the_other_folds_rows(resumed_tune):
    report = resumed_tune.report
    targets = _independent_length_targets(resumed_tune.workspace, resumed_tune.model)
    dynamic = [t for t in report["trials"] if t["setting"]["length_control"] == "dynamic"]
    assert dynamic and all(t["length_budgets"] is None for t in report["trials"] if t not in dynamic)
    for trial in dynamic:
        scale = trial["setting"]["length_scale"]
        for fold in (0, 1):
            budgets = trial["length_budgets"][str(fold)]
            assert budgets["edges"] == targets[fold].edges
            assert budgets["max_new_tokens"] == [max(1, math.ceil(n * scale)) for n in targets[fold].max_new]
            assert len(budgets["min_new_tokens"]) == len(targets[fold].edges) + 1


@pytest.mark.slow
def test_the_tuned_variant_is_a_source_with_its_own_hash_that_cv_ranks_and_submit_writes(resumed_tune, cli):
    import pandas as pd

    report, workspace = resumed_tune.report, resumed_tune.workspace
    cv = cli(["cv", "--json"], cwd=workspace)
    assert cv.exit_code == 0, cv.output
    board = {row["name"]: row for row in json.loads(cv.stdout)}
    assert board["t5@tuned"]["complete"]
    assert np.isclose(board["t5@tuned"]["oof"]["final"], report["tuned_oof_final"], atol=1e-6)
    # Its own config hash (the base candidate's + the setting), the same in every meta, shown by cv.
    tuned_metas = [json.loads((workspace / "runs" / "t5@tuned" / where / "meta.json").read_text())
                   for where in ("fold_0", "fold_1", ".")]
    assert len({meta["config_hash"] for meta in tuned_metas}) == 1
    assert board["t5@tuned"]["config_hash"] == tuned_metas[0]["config_hash"] not in ("", board["t5"]["config_hash"])
    assert all(meta["setting"] == report["best"]["setting"] for meta in tuned_metas)
    submitted = cli(["submit", "t5@tuned", "--json"], cwd=workspace)
    assert submitted.exit_code == 0, submitted.output
    row = json.loads(submitted.stdout)
    assert row["source"] == "t5@tuned" and float(row["oof_final"]) == pytest.approx(report["tuned_oof_final"], abs=1e-4)
    assert row["config_hash"] == tuned_metas[0]["config_hash"]
    written = pd.read_csv(workspace / "submissions" / row["file"], keep_default_na=False)
    tuned_test = pd.read_csv(workspace / "runs" / "t5@tuned" / "test.csv", keep_default_na=False)
    assert written["fname"].tolist() == pd.read_csv(workspace / "data" / "sample_submission.csv")["fname"].tolist()
    assert written.set_index("fname")["summary"].to_dict() == tuned_test.set_index("fname")["summary"].to_dict()


@pytest.mark.slow
def test_tpe_search_counts_the_baseline_and_resumes_with_its_knowledge(t5_workspace, cli, monkeypatch):
    import optuna  # in the dev extra
    workspace = t5_workspace
    # 6 settings (dynamic length drops max_new_tokens), 3 of them with 4 beams: the planted winners.
    # 5 trials leave one setting out, so TPE tries at least two of them.
    (workspace / "space.json").write_text(
        '{"num_beams": [1, 4], "length_control": ["fixed", "dynamic"], "max_new_tokens": [6, 12]}')
    untuned = {"num_beams": 1, "length_control": "fixed", "max_new_tokens": 12}
    monkeypatch.setattr(tuning.FoldModel, "predict",
                        planting(tuning.FoldModel.predict, lambda setting: setting["num_beams"] == 4))
    studies = []
    create_study = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kwargs: studies.append(create_study(**kwargs)) or studies[-1])
    args = ["tune", "t5", "--space", "space.json", "--method", "tpe", "--subsample", "6", "--confirm", "1", "--json"]

    first = cli(args + ["--trials", "3"], cwd=workspace)
    assert first.exit_code == 0, first.output
    lines = (workspace / "runs" / "t5@tuned" / "trials.jsonl").read_text().splitlines()
    stored = [json.loads(line) for line in lines[1:]]  # after the line recording the search's inputs
    assert sorted({t["number"] for t in stored}) == [0, 1, 2]  # --trials 3 is three trials, the untuned one included
    assert json.loads(first.stdout)["trials"][0]["setting"] == untuned

    def told(study) -> dict[str, float]:
        assert {t.state.name for t in study.trials} == {"COMPLETE"}  # none pruned, every one with its score
        return {search.setting_key(search.canonical(t.params)): t.value for t in study.trials}

    first_told = told(studies[0])
    assert first_told == {search.setting_key(t["setting"]): t["subsample_final"] for t in stored}

    second = cli(args + ["--trials", "5"], cwd=workspace)
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout)
    assert [t["number"] for t in report["trials"]] == list(range(5))
    assert len({search.setting_key(t["setting"]) for t in report["trials"]}) == 5
    # The resumed study starts from the three stored trials, as completed trials with their scores.
    resumed = studies[1]
    assert [t.value for t in resumed.trials[:3]] == [t["subsample_final"] for t in report["trials"][:3]]
    assert told(resumed) == {search.setting_key(t["setting"]): t["subsample_final"] for t in report["trials"]}
    # A planted setting is chosen (they tie: the earliest tried), beats the untuned one and is on disk.
    planted = [t for t in report["trials"] if t["setting"]["num_beams"] == 4]
    assert len(planted) >= 2 and report["best"]["number"] == planted[0]["number"]
    assert report["tuned_oof_final"] > report["untuned_oof_final"]
    tuned_meta = json.loads((workspace / "runs" / "t5@tuned" / "meta.json").read_text())
    assert tuned_meta["setting"] == planted[0]["setting"]
    # TPE chose what to try from scores over every fold's rows: the nested score says it is optimistic.
    assert report["nested_strict"] is False and "optimistic under TPE" in report["nested_note"]


def test_table_shows_trials_subsample_and_full_scores_the_choice_and_the_nested_score(korean_workspace, cli,
                                                                                      monkeypatch):
    import competition.cli.tune as tune_command

    fixed = {"length_control": "fixed", "num_beams": 1}
    dynamic = {"length_control": "dynamic", "length_scale": 0.8, "num_beams": 4}
    trials = [tuning.Trial(0, fixed, {0: 30.0, 1: 31.0}, 30.5, 29.25, {0: 29.0, 1: 29.5}),
              tuning.Trial(1, dynamic, {0: 34.0, 1: 35.0}, 34.5, 32.75, {0: 32.0, 1: 33.5}),
              tuning.Trial(2, {**fixed, "num_beams": 4}, {0: 20.0, 1: 22.0}, 21.0)]
    result = tuning.TuneResult(trials, trials[1], 31.25, {0: trials[1], 1: trials[0]}, 29.25,
                               {"subsample_rows": 40, "oof_rows": 400, "trials_file": "runs/t5@tuned/trials.jsonl"})
    monkeypatch.setattr(tune_command, "tune_candidate", lambda *args, **kwargs: result)
    shown = cli(["tune", "t5"], cwd=korean_workspace)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["#", "setting", "subsample", "(40", "rows)", "all", "OOF", "(400", "rows)"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "0", "2"]  # best subsample score first
    assert lines[2].split()[-2:] == ["34.50", "32.75"] and lines[3].split()[-2:] == ["30.50", "29.25"]
    assert lines[4].split()[-2:] == ["num_beams=4", "21.00"]  # not confirmed on all rows: no full score
    assert "length_control=dynamic, length_scale=0.8, num_beams=4" in lines[2]
    assert "chosen: #1 length_control=dynamic, length_scale=0.8, num_beams=4" in lines
    assert ("OOF final on all 400 rows: untuned 29.25 -> tuned 32.75; nested 31.25 "
            "(chosen on the other folds: fold 0 #1, fold 1 #0)") in lines
    assert lines[-1] == "wrote t5@tuned"
    result.nested_strict = False  # TPE proposed the settings
    shown = cli(["tune", "t5"], cwd=korean_workspace)
    assert shown.stdout.splitlines()[-2].endswith(
        "fold 1 #0); nested is optimistic under TPE: which settings were tried was steered by scores that include "
        "the held-out fold's rows (under --method grid the nested score is strictly nested)")


def test_dynamic_length_gives_each_length_bin_its_own_token_budget():
    import pandas as pd

    from competition.candidates.seq2seq import Params
    from competition.models.generation import generation_kwargs

    class Recorder:
        """Stands in for a trained candidate: records the budget each row was generated with."""

        params = None

        def predict(self, rows):
            return [f"{self.params.min_new_tokens}-{self.params.max_new_tokens}" for _ in range(len(rows))]

    targets = tuning.LengthTargets(edges=[50.0], max_new=[10, 40], min_new=[2, 8])
    model = tuning.FoldModel(0, Recorder(), Params(max_new_tokens=100), pd.DataFrame(), targets,
                             count_tokens=lambda texts: [len(t) for t in texts])
    rows = pd.DataFrame({"fname": ["short", "long"], "dialogue": ["가" * 10, "나" * 80]})
    assert model.predict(rows, {"length_control": "dynamic", "length_scale": 1.5}) == ["2-15", "8-60"]
    assert model.predict(rows, {"length_control": "fixed", "num_beams": 2}) == ["0-100", "0-100"]

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    assert generation_kwargs(Params(min_new_tokens=5, max_new_tokens=20), Tok())["min_new_tokens"] == 5
    assert "min_new_tokens" not in generation_kwargs(Params(), Tok())


def _files(folder) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_tune_refuses_stale_folds_and_stale_trials_and_never_trains(t5_workspace, cli):
    workspace = t5_workspace
    (workspace / "space.json").write_text('{"num_beams": [1, 2]}')
    args = ["tune", "t5", "--space", "space.json", "--trials", "2", "--subsample", "6"]
    config_file = workspace / "competition.toml"
    work = workspace / "runs" / "t5" / "fold_0" / "work"
    before = _files(work)

    # A training parameter changed without `competition run`: the folds are stale, nothing is retrained.
    config_file.write_text(config_file.read_text().replace("learning_rate = 0.01", "learning_rate = 0.02"))
    refused = cli(args, cwd=workspace)
    assert refused.exit_code == 2, refused.output
    assert ("'t5' fold 0 was trained on another config, data or folds than now: run `competition run t5` first"
            in refused.output)
    assert _files(work) == before and not (workspace / "runs" / "t5@tuned").exists()
    config_file.write_text(config_file.read_text().replace("learning_rate = 0.02", "learning_rate = 0.01"))

    # The trained weights are gone: refused, never trained again.
    weights = workspace / "runs" / "t5" / "fold_1" / "work" / "model" / "model.safetensors"
    weights.rename(weights.with_suffix(".moved"))
    refused = cli(args, cwd=workspace)
    assert refused.exit_code == 2 and "'t5' fold 1 has no trained model in" in refused.output
    assert not weights.exists()
    weights.with_suffix(".moved").rename(weights)

    assert cli(args, cwd=workspace).exit_code == 0
    assert _files(work) == before  # tuning only loaded the fold models
    # Stored trials scored with another subsample, or on fold models trained since, are not reused.
    other = cli(args[:-1] + ["8"], cwd=workspace)
    assert other.exit_code == 2 and "--subsample (6, now 8)" in other.output and "--restart" in other.output
    assert cli(["run", "t5", "--force"], cwd=workspace).exit_code == 0
    retrained = cli(args, cwd=workspace)
    assert retrained.exit_code == 2 and "training of the fold models" in retrained.output
    restarted = cli(args + ["--restart", "--json"], cwd=workspace)
    assert restarted.exit_code == 0, restarted.output
    assert [t["number"] for t in json.loads(restarted.stdout)["trials"]] == [0, 1]
    assert (workspace / "runs" / "t5@tuned" / "trials.jsonl.1").exists()


def test_trials_are_scored_with_the_objectives_row_weights():
    """Under [cv] objective = "test_matched" a trial's fold finals, pooled final and nested score are
    the weighted means cv's test-matched final takes, not plain means."""
    import pandas as pd

    from competition.text.metric import RougeScorer

    class Echo:  # a fold model whose setting says which rows it gets right
        def __init__(self, fold, rows):
            self.fold, self.rows, self.candidate = fold, rows, None

        def predict(self, rows, setting):
            return [summary if fname in setting["right"] else "x" for fname, summary in zip(rows["fname"], rows["summary"])]

    rows = {fold: pd.DataFrame({"fname": [f"r{fold}{i}" for i in range(4)], "summary": [f"s{fold}{i} a" for i in range(4)],
                                "dialogue": "d"}) for fold in (0, 1)}
    models = tuning.FoldModels([Echo(fold, frame) for fold, frame in rows.items()], make=lambda fold: None)
    weights = pd.Series([3.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5], index=[f"r{f}{i}" for f in (0, 1) for i in range(4)])
    plan = tuning.TunePlan(None, "m", tuning.TuneOptions(), "", {}, None, [], None,
                           RougeScorer("whitespace", "official", "mean"), models, {}, weights)
    finals, pooled, _ = plan.evaluate({"right": {"r00", "r10"}}, full=True)
    assert finals == {0: pytest.approx(100 * 3 / 6), 1: pytest.approx(100 * 0.5 / 2)}
    assert pooled == pytest.approx(100 * 3.5 / 8)  # plain: 2 of 8 rows right, 25
    trial = search.Trial(0, {"right": {"r00", "r10"}}, finals, pooled)
    trial.full_fold_finals = finals
    assert tuning.nested_score({0: trial, 1: trial}, {0: plan.fold_weight(0), 1: plan.fold_weight(1)}) == \
        pytest.approx(pooled)
    plain = tuning.TunePlan(None, "m", tuning.TuneOptions(), "", {}, None, [], None,
                            RougeScorer("whitespace", "official", "mean"), models, {})
    assert plain.evaluate({"right": {"r00", "r10"}}, full=True)[1] == pytest.approx(25.0)
