"""Decoding search on a tiny trained candidate: trials stored, resumable, tuned >= untuned on the
rows it was chosen on, nested score reported, NAME@tuned usable as a source."""
from __future__ import annotations

import json

import numpy as np
import pytest

from competition import tune as tuning
from tiny_models import run_through_cli, tiny_t5  # noqa: F401  (fixture)

SPACE = '{"num_beams": [1, 2], "length_penalty": [0.5, 1.0], "max_new_tokens": [6, 12]}'


def test_nested_score_never_uses_the_held_out_fold():
    trials = [tuning.Trial(0, {"a": 0}, {0: 50.0, 1: 10.0, 2: 10.0}, 0.0),
              tuning.Trial(1, {"a": 1}, {0: 20.0, 1: 20.0, 2: 20.0}, 0.0)]
    score, choices = tuning.nested_score(trials, [0, 1, 2])
    # Held out 0: on folds 1-2 trial 1 wins (20 > 10) and scores 20 on fold 0, not trial 0's 50.
    assert choices[0] == {"a": 1}
    # Held out 1: trial 0 averages 30 on folds 0 and 2, so it is chosen and scores 10 on fold 1.
    assert choices[1] == {"a": 0} and choices[2] == {"a": 0}
    assert score == pytest.approx((20 + 10 + 10) / 3)


def test_length_targets_follow_dialogue_length():
    dialogue = [10, 12, 14, 100, 110, 120] * 5
    summary = [3, 4, 5, 30, 32, 34] * 5
    targets = tuning.learn_length_targets(dialogue, summary, bins=2)
    assert targets.max_new[targets.bin_of(11)] <= 5 < 30 <= targets.max_new[targets.bin_of(115)]


def test_space_rejects_non_generation_keys(tmp_path):
    from competition.candidates.seq2seq import Params
    from competition.errors import ConfigError

    path = tmp_path / "space.json"
    path.write_text('{"learning_rate": [0.1]}')
    with pytest.raises(ConfigError, match="learning_rate"):
        tuning.load_space(path, Params())


@pytest.mark.slow
def test_tune_runs_end_to_end_and_resumes(tiny_t5, korean_workspace, cli, monkeypatch):
    table = (f'kind = "seq2seq"\nmodel = "{tiny_t5}"\nmax_steps = 4\nbatch_size = 4\nlearning_rate = 0.01\n'
             'max_new_tokens = 12\nnum_beams = 1\neval_batch_size = 8\n')
    run_through_cli(cli, korean_workspace, "t5", table)
    (korean_workspace / "space.json").write_text(SPACE)

    # Interrupt the search after two trials: what a kill looks like.
    calls = {"n": 0}
    original = tuning.FoldModel.predict

    def dying(self, rows, setting):
        calls["n"] += 1
        if calls["n"] > 4:  # 2 folds per trial: two trials done, then die
            raise KeyboardInterrupt
        return original(self, rows, setting)

    monkeypatch.setattr(tuning.FoldModel, "predict", dying)
    killed = cli(["tune", "t5", "--space", "space.json", "--trials", "5", "--subsample", "6"], cwd=korean_workspace)
    assert killed.exit_code == 1 and "Aborted" in killed.output  # click's answer to Ctrl-C
    trials_file = korean_workspace / "runs" / "t5@tuned" / "trials.jsonl"
    assert len(trials_file.read_text().splitlines()) == 2
    monkeypatch.setattr(tuning.FoldModel, "predict", original)

    result = cli(["tune", "t5", "--space", "space.json", "--trials", "5", "--subsample", "6", "--confirm", "2",
                  "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    numbers = [t["number"] for t in report["trials"]]
    assert numbers == list(range(5))  # 2 resumed + 3 new, none repeated
    assert len({json.dumps(t["setting"], sort_keys=True) for t in report["trials"]}) == 5
    # The tuned variant is at least as good as the untuned setting on the rows it was chosen on.
    assert report["tuned_oof_final"] >= report["untuned_oof_final"]
    assert isinstance(report["nested_oof_final"], float) and set(report["nested_choices"]) == {"0", "1"}

    # NAME@tuned is a source like any other: OOF for every row, a test output, ranked by cv.
    cv = cli(["cv", "--json"], cwd=korean_workspace)
    assert cv.exit_code == 0, cv.output
    board = {row["name"]: row for row in json.loads(cv.stdout)}
    assert board["t5@tuned"]["complete"]
    assert np.isclose(board["t5@tuned"]["oof"]["final"], report["tuned_oof_final"], atol=1e-6)


def test_grid_does_not_repeat_settings_that_differ_only_in_unused_length_scale():
    settings = tuning.grid({"length_control": ["fixed", "dynamic"], "length_scale": [1.0, 1.3], "num_beams": [1]})
    assert len(settings) == 3
    assert {"length_control": "fixed", "length_scale": 1.0, "num_beams": 1} in settings


def test_dynamic_length_gives_each_length_bin_its_own_token_budget():
    import pandas as pd

    from competition.candidates.seq2seq import Params
    from competition.generation import generation_kwargs

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
