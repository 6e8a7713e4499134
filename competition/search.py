"""Decoding search spaces and strategies: which generation settings to try, in which order.

A space is {parameter: [values]}; `canonical` merges settings that generate alike, `grid` lists
the distinct ones. GridSearch walks them in a seeded order; TpeSearch asks optuna's TPE one
setting at a time and tells it each score, so it learns from every trial (stored ones included).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CompetitionError, ConfigError

if TYPE_CHECKING:
    from .tune import Trial

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


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def default_space(params) -> dict[str, list]:
    """DEFAULT_SPACE, plus a summary-length floor for fixed length control (`min_new_tokens` 0 or
    an eighth of the candidate's own `max_new_tokens`) where the kind has one: 80 distinct settings
    once `canonical` merges equivalent ones, which --trials 20 samples. max_new_tokens is searched
    through dynamic control (learnt per bin, times length_scale); fixed keeps the candidate's cap."""
    space = dict(DEFAULT_SPACE)
    if hasattr(params, "min_new_tokens"):
        space["min_new_tokens"] = [0, max(1, params.max_new_tokens // 8)]
    return space


def load_space(path: str | Path | None, params) -> dict[str, list]:
    """The search space: {parameter: [values]} from a TOML/JSON file, else `default_space`, limited
    to what the candidate's Params can take."""
    if path is None:
        space = default_space(params)
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"search space file {path} not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            space = json.loads(text)
        else:
            import tomllib

            space = tomllib.loads(text)
        space = space.get("space", space)
    names = {f.name for f in dataclasses.fields(params)}
    problems = []
    for key, values in space.items():
        if key not in GENERATION_KEYS:
            problems.append(f"{key!r} is not a generation parameter ({', '.join(GENERATION_KEYS)})")
        elif key not in names and key not in LENGTH_KEYS:
            problems.append(f"{key!r} is not a parameter of this candidate's kind")
        elif not isinstance(values, list) or not values:
            problems.append(f"{key} should be a non-empty list of values")
    if problems:
        raise ConfigError("search space: " + "; ".join(problems))
    return space


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


def make_search(method: str, space: dict[str, list], done: list[Trial], seed: int) -> GridSearch:
    if method == "grid":
        return GridSearch(space, done, seed)
    if method == "tpe":
        return TpeSearch(space, done, seed)
    raise ConfigError(f"unknown search method {method!r}: choose grid or tpe")
