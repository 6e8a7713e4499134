"""The names a setting may take, for the stages that act on them and for config.py, which checks
them at load: a leaf (errors only), so checking a value never imports the stage itself."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

STRATEGIES = ("length", "random", "stratify:COLUMN", "group:COLUMN")  # [cv] strategy (folds.py)
ENSEMBLE_METHODS = ("best", "mbr", "hill-climb")  # [ensembles.NAME] method (ensemble.py)
PICK_BY = ("test_matched", "oof")  # [cv] pick_by: the test-matched final or the plain OOF final
CONVENTIONS = ("official", "rouge-score")  # [metric] convention (metric.py)
MULTI_REF_RULES = ("mean", "max")  # [metric] multi_ref (metric.py)
EXECUTORS = ("local", "ray")  # run --executor (executors.py)
HISTORY_SORT_KEYS = ("id", "cv", "public", "private")  # history --sort (history.py)
SEARCH_METHODS = ("grid", "tpe")  # tune --method (search.py)
AUGMENTATIONS = ("speaker-swap", "paraphrase", "synthetic")  # augment METHOD (augment.py)
LEADERBOARD_BACKENDS = ("manual", "kaggle")  # [leaderboard] backend (leaderboard.py)


@dataclass
class FoldPlan:
    """A parsed strategy: kind is length, random, stratify or group; column for the last two."""

    kind: str
    column: str = ""

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.column}" if self.column else self.kind


def parse_strategy(strategy: str) -> FoldPlan:
    kind, _, column = strategy.partition(":")
    if kind in ("length", "random") and not column:
        return FoldPlan(kind)
    if kind in ("stratify", "group") and column:
        return FoldPlan(kind, column)
    raise ConfigError(f"fold strategy {strategy!r} is not one of {', '.join(STRATEGIES)} "
                      f"(e.g. group:topic); fix [cv] strategy or --strategy")


def listed(names) -> str:
    """Names as a message offers them: "a", "a or b", "a, b or c"."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
