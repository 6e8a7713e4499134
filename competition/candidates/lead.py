"""`lead`: the first N turns of the dialogue, N tuned on the training rows. A floor every model
must beat, and the CPU default."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from ..data.loading import references
from ..data.shift import weighted_mean
from ..errors import ConfigError
from ..models.params import Composed, at_least
from ..text.metric import get_scorer
from ..text.turns import lead_text
from .base import Candidate


@dataclass
class Params(Composed):
    turns: int = 0  # N turns to keep; 0 = tune N in [min_turns, max_turns] on the training rows
    min_turns: int = 1  # smallest N tried when tuning
    max_turns: int = 6  # largest N tried when tuning
    turn_format: str = "{speaker}: {text}"  # one turn; "{speaker}는 {text}" rewrites tags, "{text}" drops them
    joiner: str = " "  # between turns
    tune_rows: int = 2000  # tune on at most this many training rows (a seeded sample); 0 = all

    def check(self) -> list[str]:
        problems = at_least(self, ("turns", "tune_rows"), 0) + at_least(self, ("min_turns",), 1)
        if self.max_turns < self.min_turns:
            problems.append(f"max_turns = {self.max_turns} should be min_turns ({self.min_turns}) or more")
        if "{text}" not in self.turn_format:
            problems.append(f"turn_format = {self.turn_format!r} should contain {{text}}")
        return problems


class LeadCandidate(Candidate):
    kind = "lead"
    uses_metric = True  # N is tuned with the [metric] scorer (the runner hashes its settings)
    uses_objective = True  # ... on training rows weighted as [cv] objective says

    def __init__(self, name, params, workdir, seed=42, inputs=None):
        super().__init__(name, params, workdir, seed, inputs)
        self.turns_ = params.turns or params.min_turns

    def _write(self, rows: pd.DataFrame, turns: int) -> list[str]:
        return [lead_text(d, turns, self.params.turn_format, self.params.joiner) for d in rows["dialogue"]]

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        """Choose N with the best ROUGE final on (a sample of) the training rows, each row weighted
        by [cv] objective (row_weights) so N is what cv's ranking score prefers."""

        try:
            self.params.turn_format.format(speaker="#Person1#", text="x")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"[candidates.{self.name}] turn_format = {self.params.turn_format!r}: {error}; "
                              f"use {{speaker}} and {{text}} only") from None
        if self.params.turns:
            self.turns_, scores = self.params.turns, {}
        else:
            rows = train_rows
            if self.params.tune_rows and len(rows) > self.params.tune_rows:
                rows = rows.sample(self.params.tune_rows, random_state=self.seed)
            metric, row_weights = self.inputs.metric, self.inputs.row_weights
            scorer = get_scorer(metric.tokenizer, metric.convention, metric.multi_ref)
            refs = references(rows)
            weights = None
            if row_weights is not None:
                weights = row_weights.reindex(rows["fname"]).fillna(1.0).to_numpy()  # augmented rows: 1
            scores = {}
            for n in range(self.params.min_turns, self.params.max_turns + 1):
                result = scorer.score(self._write(rows, n), refs)
                scores[n] = result.final if weights is None else float(weighted_mean(result.row_finals, weights))
            self.turns_ = max(scores, key=lambda n: (scores[n], -n))  # ties: fewer turns
        self.workdir.mkdir(parents=True, exist_ok=True)
        report = {"fold": fold, "turns": self.turns_, "tuning_finals": {str(n): s for n, s in scores.items()},
                  "rows": int(len(train_rows))}
        (self.workdir / "lead.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def predict(self, rows: pd.DataFrame) -> list[str]:
        return self._write(rows, self.turns_)


CANDIDATE = LeadCandidate
