"""The search of decoding settings: the space (default, file, refused keys and values), the grid,
TPE told every score and resumed from stored trials, the trial store and what it refuses."""
from __future__ import annotations

import json

import pytest

from competition.errors import CompetitionError
from competition.stages import search, tune as tuning

# The untuned decoding of the tune tests' T5 candidate (tests/test_tune.py).
UNTUNED = {"num_beams": 1, "length_penalty": 1.0, "max_new_tokens": 12, "length_control": "fixed", "length_scale": 1.0}


def test_tpe_is_told_every_score_and_keeps_stored_trials():
    space = {"num_beams": [1, 2, 4], "length_penalty": [0.5, 1.0, 2.0], "no_repeat_ngram_size": [0, 3]}

    def score(setting: dict) -> float:  # best: 4 beams, length_penalty 0.5, no repeats
        return setting["num_beams"] * 10 - setting["length_penalty"] * 5 + setting["no_repeat_ngram_size"]

    done: list[tuning.Trial] = []
    tpe = search.make_search("tpe", space, done, seed=0)
    tpe.tell(tuning.Trial(0, {**UNTUNED, "num_beams": 3}, {}, 0.0))  # the untuned value is not a choice
    for number in range(1, 13):
        setting = tpe.ask()
        done.append(tuning.Trial(number, setting, {}, score(setting)))
        tpe.tell(done[-1])
    assert len({search.setting_key(t.setting) for t in done}) == 12  # 12 distinct of the 14 settings
    study = tpe.study
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    for trial in study.trials:  # every proposal, repeats included, carries its setting's real score
        assert trial.value == score(search.canonical(trial.params))
    # Resumed: the stored trials are in the new study as completed trials before anything is asked.
    resumed = search.make_search("tpe", space, done, seed=0)
    assert [t.value for t in resumed.study.trials] == [t.subsample_final for t in done]
    remaining = {search.setting_key(s) for s in search.grid(space)} - {search.setting_key(t.setting) for t in done}
    asked = [resumed.ask(), None]
    resumed.tell(tuning.Trial(13, asked[0], {}, score(asked[0])))
    asked[1] = resumed.ask()
    assert {search.setting_key(s) for s in asked} == remaining
    resumed.tell(tuning.Trial(14, asked[1], {}, score(asked[1])))
    assert resumed.ask() is None  # the space is exhausted


def test_tpe_without_optuna_says_how_to_install_it(korean_workspace, cli, monkeypatch):
    import sys

    config = korean_workspace / "competition.toml"
    config.write_text(config.read_text() + '[candidates.t5]\nkind = "seq2seq"\nmodel = "some/t5"\n')
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets where it is not installed
    result = cli(["tune", "t5", "--method", "tpe"], cwd=korean_workspace)
    assert result.exit_code == 2
    assert "pip install 'competition[tune]'" in result.output and "--method grid" in result.output


def test_space_rejects_non_generation_keys(tmp_path):
    from competition.candidates.seq2seq import Params
    from competition.errors import ConfigError

    path = tmp_path / "space.json"
    path.write_text('{"learning_rate": [0.1]}')
    with pytest.raises(ConfigError, match="learning_rate"):
        search.load_space(path, Params())


def test_grid_does_not_repeat_settings_that_differ_only_in_unused_length_scale():
    settings = search.grid({"length_control": ["fixed", "dynamic"], "length_scale": [1.0, 1.3], "num_beams": [1]})
    assert len(settings) == 3
    assert {"length_control": "fixed", "length_scale": 1.0, "num_beams": 1} in settings


def test_default_space_searches_length_and_stays_small():
    from competition.candidates.prompt import Params as PromptParams
    from competition.candidates.seq2seq import Params

    settings = search.grid(search.load_space(None, Params(max_new_tokens=160)))
    assert len(settings) == 80  # 16 decoding settings x (2 fixed floors + 3 dynamic scales)
    assert {s["min_new_tokens"] for s in settings if s["length_control"] == "fixed"} == {0, 20}
    assert {s["length_scale"] for s in settings if s["length_control"] == "dynamic"} == {0.8, 1.0, 1.2}
    assert all("min_new_tokens" not in s for s in settings if s["length_control"] == "dynamic")
    assert {s["length_penalty"] for s in settings if s["num_beams"] == 1} == {1.0}  # greedy ignores it
    assert len(search.grid(search.load_space(None, PromptParams()))) == 80


def test_trial_store_keeps_trials_after_a_cut_line_and_the_latest_confirmation(tmp_path):
    store = search.TrialStore(tmp_path / "trials.jsonl", {"subsample": 6, "seed": 1})
    first = tuning.Trial(0, {"num_beams": 1}, {0: 10.0}, 10.0)
    store.append(first)
    store.append(tuning.Trial(1, {"num_beams": 2}, {0: 12.0}, 12.0))
    with open(store.path, "a", encoding="utf-8") as out:  # a kill in the middle of trial 2's line
        out.write('{"number": 2, "setting": {"num_beams": 4}, "fold_fi')
    store.append(tuning.Trial(2, {"num_beams": 3}, {0: 11.0}, 11.0))
    first.full_final, first.full_fold_finals = 9.5, {0: 9.5}
    store.append(first)  # its confirmation on all OOF rows, stored as a second line
    loaded = store.load()
    assert [(t.number, t.setting["num_beams"]) for t in loaded] == [(0, 1), (1, 2), (2, 3)]
    assert loaded[0].full_final == 9.5 and loaded[0].full_fold_finals == {0: 9.5}


def test_trial_store_refuses_trials_scored_on_other_inputs_until_restarted(tmp_path):
    inputs = {"candidate": "t5", "config_hash": "abc", "fold_trained_at": ["t0", "t1"], "subsample": 6, "seed": 1}
    search.TrialStore(tmp_path / "trials.jsonl", inputs).append(tuning.Trial(0, {"num_beams": 1}, {0: 1.0}, 1.0))
    assert len(search.TrialStore(tmp_path / "trials.jsonl", dict(inputs)).load()) == 1

    changed = search.TrialStore(tmp_path / "trials.jsonl", {**inputs, "subsample": 8, "fold_trained_at": ["t2", "t1"]})
    with pytest.raises(CompetitionError) as refused:
        changed.load()
    message = str(refused.value)
    assert "training of the fold models" in message and "--subsample (6, now 8)" in message
    assert "--restart" in message and "\n" not in message
    aside = changed.restart()
    assert aside == tmp_path / "trials.jsonl.1" and aside.exists() and changed.load() == []

    (tmp_path / "trials.jsonl").write_text(json.dumps(tuning.Trial(0, {"num_beams": 1}, {0: 1.0}, 1.0).as_dict()) + "\n")
    with pytest.raises(CompetitionError, match="no record of what its scores depend on.*--restart"):
        changed.load()  # a file from before the inputs were recorded
    assert changed.restart() == tmp_path / "trials.jsonl.2"


@pytest.mark.parametrize("name, text, problem", [
    ("space.json", '{"num_beams": [1, 2', "not valid JSON"),
    ("space.toml", "num_beams = [1, 2", "not valid TOML"),
    ("space.json", "[1, 2]", "expected a table {parameter: [values]}, found a list"),
    ("space.json", '{"length_control": ["fixed", "short"]}', "length_control = 'short' should be \"fixed\" or"),
    ("space.json", '{"num_beams": [0, 4]}', "num_beams = 0 should be a whole number >= 1"),
    ("space.json", '{"num_beams": [[1, 2]]}', "num_beams = [1, 2] should be a whole number >= 1"),
    ("space.toml", "[space]\nlength_penalty = [{a = 1}]", "length_penalty = {'a': 1} should be a number"),
    ("space.json", '{"no_repeat_ngram_size": [true]}', "no_repeat_ngram_size = True should be a whole number"),
    ("space.json", '{"length_scale": [0.0]}', "length_scale = 0.0 should be a number > 0"),
])
def test_space_file_problems_are_config_errors_naming_file_and_key(tmp_path, name, text, problem):
    from competition.candidates.seq2seq import Params
    from competition.errors import ConfigError

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        search.load_space(path, Params())
    assert str(path) in str(refused.value) and problem in str(refused.value)

