"""The lead candidate: the first N turns, N tuned on the fold's training rows."""
from __future__ import annotations

import json

import pytest

from competition.candidates.lead import LeadCandidate, Params as LeadParams
from competition.text.turns import lead_text, split_turns
from competition.workspace.config import build_dataclass

DIALOGUE = "#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.\n이어지는 말입니다.\n#Person1#: 우산을 찾아요."


def test_split_turns_and_lead_text_by_hand():
    assert split_turns(DIALOGUE) == [("#Person1#", "안녕하세요."), ("#Person2#", "네, 안녕하세요. 이어지는 말입니다."),
                                     ("#Person1#", "우산을 찾아요.")]
    assert lead_text(DIALOGUE, 1) == "#Person1#: 안녕하세요."
    assert lead_text(DIALOGUE, 2, "{speaker}는 {text}") == "#Person1#는 안녕하세요. #Person2#는 네, 안녕하세요. 이어지는 말입니다."
    assert lead_text(DIALOGUE, 9, "{text}", joiner="\n") == "안녕하세요.\n네, 안녕하세요. 이어지는 말입니다.\n우산을 찾아요."
    assert lead_text("태그 없는 대화", 2) == "태그 없는 대화"


def test_lead_tunes_n_on_its_training_rows(tmp_path, korean_rows):
    # References are exactly the first two turns: tuning must find N = 2 and say so in work/lead.json.
    rows = korean_rows.assign(summary=[lead_text(d, 2) for d in korean_rows["dialogue"]])
    candidate = LeadCandidate("lead", LeadParams(max_turns=5), tmp_path / "work")
    candidate.fit(rows, fold=0)
    assert candidate.turns_ == 2
    report = json.loads((tmp_path / "work" / "lead.json").read_text())
    assert report["turns"] == 2 and report["tuning_finals"]["2"] == pytest.approx(100.0)
    assert candidate.predict(rows.head(3)) == rows["summary"].head(3).tolist()
    fixed = LeadCandidate("lead", LeadParams(turns=1), tmp_path / "fixed")
    fixed.fit(rows, fold=None)
    assert fixed.predict(rows.head(1)) == [lead_text(rows["dialogue"].iloc[0], 1)]


def test_lead_params_refuse_bad_values_each_naming_its_key():
    problems: list[str] = []
    build_dataclass(LeadParams, {"min_turns": 3, "max_turns": 2}, "candidates.lead", problems)
    build_dataclass(LeadParams, {"turns": -1, "min_turns": 0, "tune_rows": -5, "turn_format": "{speaker}"},
                    "candidates.lead", problems)
    assert problems == ["[candidates.lead] max_turns = 2 should be min_turns (3) or more",
                        "[candidates.lead] turns = -1 should be 0 or more",
                        "[candidates.lead] tune_rows = -5 should be 0 or more",
                        "[candidates.lead] min_turns = 0 should be 1 or more",
                        "[candidates.lead] turn_format = '{speaker}' should contain {text}"]


def test_lead_tunes_n_on_rows_weighted_by_the_objective(tmp_path):
    """Rows whose summary is their first turn want N = 1, rows whose summary is their first three
    turns want N = 3: the plain mean follows the majority, the objective's weights the heavier rows."""
    import pandas as pd

    from competition.candidates.base import FoldInputs
    from competition.text.metric import MetricConfig

    turns = [f"#Person1#: w{i}a w{i}b\n#Person2#: w{i}c w{i}d\n#Person1#: w{i}e w{i}f\n#Person2#: w{i}g"
             for i in range(10)]
    rows = pd.DataFrame({"fname": [f"r{i}" for i in range(10)], "dialogue": turns, "topic": "t",
                         "summary": [lead_text(d, 1 if i < 7 else 3) for i, d in enumerate(turns)]})
    whitespace = MetricConfig(tokenizer="whitespace")
    candidate = LeadCandidate("lead", LeadParams(max_turns=4), tmp_path / "plain", inputs=FoldInputs(whitespace))
    candidate.fit(rows, 0)
    assert candidate.turns_ == 1
    weights = pd.Series([0.2] * 7 + [5.0] * 3, index=rows["fname"])
    weighted = LeadCandidate("lead", LeadParams(max_turns=4), tmp_path / "weighted",
                             inputs=FoldInputs(whitespace, row_weights=weights))
    weighted.fit(rows, 0)
    assert weighted.turns_ == 3
