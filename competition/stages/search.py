"""Decoding search: spaces, strategies and the stored trials.

A space is {parameter: [values]}; `canonical` merges settings that generate alike, `grid` lists
the distinct ones. GridSearch walks them in a seeded order; TpeSearch asks optuna's TPE one
setting at a time and tells it each score, so it learns from every trial (stored ones included).
TrialStore keeps finished trials with a record of what their scores depend on, so a resumed
search never reuses a score made on other folds, rows or models.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompetitionError, ConfigError
from ..files import atomic_write_text
from ..models.params import Generation

# Generation parameters a setting may change; "length_control"/"length_scale" are ours (below).
GENERATION_KEYS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "repetition_penalty",
                   "max_new_tokens", "min_new_tokens", "length_control", "length_scale")
LENGTH_KEYS = ("length_control", "length_scale")
DEFAULT_SPACE = {
    "num_beams": [1, 4],
    "length_penalty": [0.5, 1.0, 1.5],  # beam search only: greedy settings carry 1.0
    "no_repeat_ngram_size": [0, 3],
    "repetition_penalty": [1.0, 1.2],
    # dynamic: max/min_new_tokens per dialogue-length bin, learnt from each fold's training rows
    "length_control": ["fixed", "dynamic"],
    "length_scale": [0.8, 1.0, 1.2],  # dynamic only: scales the learnt budgets
}
# What each value of a space must be: (whole number?, test, what the message asks for).
_VALUE_RULES = {
    "num_beams": (True, lambda v: v >= 1, "a whole number >= 1"),
    "no_repeat_ngram_size": (True, lambda v: v >= 0, "a whole number >= 0"),
    "max_new_tokens": (True, lambda v: v >= 1, "a whole number >= 1"),
    "min_new_tokens": (True, lambda v: v >= 0, "a whole number >= 0"),
    "length_penalty": (False, lambda v: True, "a number"),
    "repetition_penalty": (False, lambda v: v > 0, "a number > 0"),
    "length_scale": (False, lambda v: v > 0, "a number > 0"),
}
LENGTH_CONTROLS = ("fixed", "dynamic")


@dataclass
class Trial:
    """One setting's scores: per fold on the subsample rows, and on all OOF rows once confirmed."""

    number: int
    setting: dict
    fold_finals: dict[int, float]  # fold -> final on that fold's subsample rows
    subsample_final: float  # pooled over the subsample rows
    full_final: float | None = None  # pooled over all OOF rows (confirmation)
    full_fold_finals: dict[int, float] | None = None  # fold -> final on all its OOF rows
    length_budgets: dict[int, dict] | None = None  # dynamic length: fold -> per-bin token budgets
    method: str | None = None  # the search that proposed it: "tpe" proposals saw every fold's rows

    def as_dict(self) -> dict:
        return {"number": self.number, "setting": self.setting, "fold_finals": _str_keys(self.fold_finals),
                "subsample_final": self.subsample_final, "full_final": self.full_final,
                "full_fold_finals": _str_keys(self.full_fold_finals), "length_budgets": _str_keys(self.length_budgets),
                "method": self.method}

    @classmethod
    def from_dict(cls, raw: dict) -> "Trial":
        return cls(raw["number"], raw["setting"], _int_keys(raw["fold_finals"]), raw["subsample_final"],
                   raw.get("full_final"), _int_keys(raw.get("full_fold_finals")), _int_keys(raw.get("length_budgets")),
                   raw.get("method"))


def _str_keys(by_fold: dict | None) -> dict | None:
    return None if by_fold is None else {str(k): v for k, v in by_fold.items()}


def _int_keys(by_fold: dict | None) -> dict | None:
    return None if by_fold is None else {int(k): v for k, v in by_fold.items()}


# How a changed input of a stored search is named in the refusal; values shown for the options.
_INPUT_NAMES = {"candidate": "candidate", "config_hash": "candidate config", "k": "number of folds",
                "fold_trained_at": "training of the fold models (re-run since)", "data_sha256": "labelled data",
                "folds_sha256": "fold split", "test_sha256": "test file", "dev_sha256": "dev file",
                "subsample": "--subsample", "seed": "--seed", "metric": "[metric] settings"}
_SHOWN = ("candidate", "k", "subsample", "seed")


class TrialStore:
    """trials.jsonl beside the tuned variant: a first line {"inputs": ...} recording what the scores
    depend on besides the setting (candidate, fold models, rows, subsample, seed, metric), then one
    finished trial per line, appended at once. Trials scored on other inputs are refused, not reused."""

    def __init__(self, path: Path, inputs: dict):
        self.path = Path(path)
        self.inputs = json.loads(json.dumps(inputs))  # as it reads back (tuples become lists)

    def load(self) -> list[Trial]:
        """The stored trials, the latest line of each setting (a confirmation rewrites a trial)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines:
            return []
        self._check_inputs(_parsed(lines[0]))
        trials = []
        for line in lines[1:]:
            try:
                trials.append(Trial.from_dict(_parsed(line)))
            except (TypeError, KeyError, ValueError):
                continue  # a line cut by a kill mid-write
        latest = {setting_key(t.setting): t for t in trials}
        return sorted(latest.values(), key=lambda t: t.number)

    def _check_inputs(self, header) -> None:
        stored = header.get("inputs") if isinstance(header, dict) else None
        if stored == self.inputs:
            return
        if not isinstance(stored, dict):
            what = "has no record of what its scores depend on"
        else:
            changed = [key for key in self.inputs if stored.get(key) != self.inputs[key]] or sorted(stored)
            what = "was scored with another " + ", ".join(
                f"{_INPUT_NAMES.get(key, key)} ({stored.get(key)}, now {self.inputs.get(key)})" if key in _SHOWN
                else _INPUT_NAMES.get(key, key) for key in changed)
        raise CompetitionError(f"{self.path} {what}: its scores do not apply; pass --restart to move it aside "
                               "and search again (or rerun with the options it was scored with)")

    def append(self, trial: Trial) -> None:
        if not self.path.exists():
            atomic_write_text(self.path, json.dumps({"inputs": self.inputs}, ensure_ascii=False) + "\n")
        with open(self.path, "ab+") as out:  # appends go to the end; reading finds how the file ends
            size = out.seek(0, os.SEEK_END)
            out.seek(max(size - 1, 0))
            cut = size > 0 and out.read(1) != b"\n"  # a line cut by a kill: end it, or it swallows this one
            out.write((("\n" if cut else "") + json.dumps(trial.as_dict(), ensure_ascii=False) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())

    def restart(self) -> Path | None:
        """Move the stored trials aside (trials.jsonl.N, the first free N); None when there are none."""
        if not self.path.exists():
            return None
        number = 1
        while (aside := self.path.with_name(f"{self.path.name}.{number}")).exists():
            number += 1
        self.path.rename(aside)
        return aside


def _parsed(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def default_space(params) -> dict[str, list]:
    """DEFAULT_SPACE, plus a summary-length floor for fixed length control (`min_new_tokens` 0 or
    an eighth of the candidate's own `max_new_tokens`) where the kind has one: 80 distinct settings
    once `canonical` merges equivalent ones, which --trials 20 samples. max_new_tokens is searched
    through dynamic control (learnt per bin, times length_scale); fixed keeps the candidate's cap."""
    space = dict(DEFAULT_SPACE)
    if isinstance(params, Generation):
        space["min_new_tokens"] = [0, max(1, params.max_new_tokens // 8)]
    return space


def load_space(path: str | Path | None, params) -> dict[str, list]:
    """The search space: {parameter: [values]} from a TOML/JSON file (top level or a [space]
    table), else `default_space`, limited to what the candidate's Params can take. Every problem
    is a ConfigError naming the file and the key."""
    if path is None:
        return _checked(default_space(params), params, "the default search space")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search space file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            space = json.loads(text)
        else:

            space = tomllib.loads(text)
    except ValueError as error:  # JSONDecodeError and TOMLDecodeError both are
        kind = "JSON" if path.suffix == ".json" else "TOML (use a .json name for JSON)"
        raise ConfigError(f"search space file {path} is not valid {kind}: {error}") from None
    if isinstance(space, dict) and "space" in space:
        space = space["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"search space file {path}: expected a table {{parameter: [values]}}, "
                          f"found a {type(space).__name__}")
    return _checked(space, params, f"search space file {path}")


def _checked(space: dict, params, where: str) -> dict[str, list]:
    """`space`, or a ConfigError listing every key the candidate cannot take and every bad value."""
    names = {f.name for f in dataclasses.fields(params)}
    problems = []
    for key, values in space.items():
        if key not in GENERATION_KEYS:
            problems.append(f"{key!r} is not a generation parameter ({', '.join(GENERATION_KEYS)})")
        elif key not in names and key not in LENGTH_KEYS:
            problems.append(f"{key!r} is not a parameter of this candidate's kind")
        elif not isinstance(values, list) or not values:
            problems.append(f"{key} should be a non-empty list of values")
        else:
            problems += [f"{key} = {value!r} should be {wanted}" for value in values
                         if (wanted := _bad_value(key, value))]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return space


def _bad_value(key: str, value) -> str | None:
    """What `value` of `key` should be, or None when it is fine."""
    if key == "length_control":
        return None if value in LENGTH_CONTROLS else " or ".join(f'"{c}"' for c in LENGTH_CONTROLS)
    whole, test, wanted = _VALUE_RULES[key]
    number = isinstance(value, int) or (isinstance(value, float) and not whole and math.isfinite(value))
    return None if number and not isinstance(value, bool) and test(value) else wanted


def canonical(setting: dict) -> dict:
    """One form for settings that generate alike: length_penalty only acts in beam search (greedy
    carries 1.0), length_scale only with dynamic length control (fixed carries 1.0), and dynamic
    control replaces max/min_new_tokens by its per-bin budgets (dropped)."""
    setting = dict(setting)
    if setting.get("num_beams") == 1 and "length_penalty" in setting:
        setting["length_penalty"] = 1.0
    if setting.get("length_control", "fixed") == "dynamic":
        setting.pop("max_new_tokens", None)
        setting.pop("min_new_tokens", None)
    elif "length_scale" in setting:
        setting["length_scale"] = 1.0
    return setting


def grid(space: dict[str, list]) -> list[dict]:
    """Every distinct setting of the space (settings equal after `canonical` appear once)."""
    keys = sorted(space)
    settings = [canonical(dict(zip(keys, values))) for values in itertools.product(*(space[k] for k in keys))]
    return list({setting_key(s): s for s in settings}.values())


class GridSearch:
    """The space's settings in an order shuffled by seed (the grid is often larger than the trial
    budget), skipping settings already scored."""

    def __init__(self, space: dict[str, list], done: list[Trial], seed: int):
        self.space = space
        self.scores = {setting_key(t.setting): t.subsample_final for t in done}
        self._queue = grid(space)
        random.Random(seed).shuffle(self._queue)
        self._queue.reverse()  # popped from the end

    def ask(self) -> dict | None:
        """The next setting to score, None once every setting of the space is scored."""
        while self._queue:
            setting = self._queue.pop()
            if setting_key(setting) not in self.scores:
                return setting
        return None

    def tell(self, trial: Trial) -> None:
        self.scores[setting_key(trial.setting)] = trial.subsample_final


class TpeSearch(GridSearch):
    """optuna's TPE over the same choices, asked one setting at a time and told its subsample
    final, so each proposal learns from every score before it (stored trials included)."""

    ASKS_PER_TRIAL = 50  # TPE proposals of known settings tolerated before the grid order takes over

    def __init__(self, space: dict[str, list], done: list[Trial], seed: int):
        super().__init__(space, done, seed)
        optuna = _import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._asked = None
        for trial in done:
            self._add_completed(trial)

    def ask(self) -> dict | None:
        for _ in range(self.ASKS_PER_TRIAL):
            asked = self.study.ask(self.distributions)
            setting = canonical({k: asked.params[k] for k in sorted(self.space)})
            known = self.scores.get(setting_key(setting))
            if known is None:
                self._asked = asked
                return setting
            self.study.tell(asked, known)  # already scored: its score is the answer, ask again
        self._asked = None
        return super().ask()

    def tell(self, trial: Trial) -> None:
        super().tell(trial)
        if self._asked is not None:
            self.study.tell(self._asked, trial.subsample_final)
            self._asked = None
        else:  # the untuned baseline, or a setting from the grid order
            self._add_completed(trial)

    def _add_completed(self, trial: Trial) -> None:
        """Tell the study a trial it did not ask for, where its setting is a point of the space."""
        params = {}
        for key, choices in self.space.items():
            value = trial.setting.get(key, choices[0])
            params[key] = value if value in choices else choices[0]  # a key the setting ignores takes any
        if canonical(params) != trial.setting:
            return  # not a point of the space, e.g. an untuned value that is none of the choices
        self.study.add_trial(self._optuna.trial.create_trial(params=params, distributions=self.distributions,
                                                             value=trial.subsample_final))


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise CompetitionError("--method tpe needs optuna: pip install 'competition[tune]' (or pip install optuna), "
                               "or use --method grid") from None
    return optuna


SEARCHES = {"grid": GridSearch, "tpe": TpeSearch}


def check_method(method: str) -> None:
    """Refuse an unknown method, or tpe without optuna, before anything slow runs."""
    if method not in SEARCHES:
        raise ConfigError(f"unknown search method {method!r}: choose {' or '.join(SEARCHES)}")
    if method == "tpe":
        _import_optuna()


def make_search(method: str, space: dict[str, list], done: list[Trial], seed: int) -> GridSearch:
    check_method(method)
    return SEARCHES[method](space, done, seed)
