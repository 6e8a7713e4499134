"""Pairs per second of our ROUGE vs the naive way (the oracle package called per pair).

Run: .venv/bin/python bench/metric.py [--data ../shared/data] [--naive-cap 2000]

Data: dialogsum-ko/dev.csv (Kiwi morphemes) and the 12,460 dialogsum-en/train.jsonl rows (english
tokenizer); prediction = the dialogue's first turn, reference = its summary.
- naive: per pair, tokenise both texts, then `rouge` 1.0.1 `Rouge().get_scores` (official) or
  `rouge_score.rouge_scorer.RougeScorer.score` (rouge-score); capped at --naive-cap pairs.
- ours cold: a fresh RougeScorer (tokenizer already loaded), tokenisation included.
- ours warm: the same scorer again with its LCS cache cleared (tokens cached, counting and LCS
  redone): the best of 3 such calls, as re-scoring runs in CV, ensembles and decoding search.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from competition.data.loading import read_split
from competition.text.metric import RougeScorer
from competition.text.tokenizers import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["rouge1", "rouge2", "rougeL"]


class _PerTextTokenizer:
    """rouge-score's plug point: one tokenizer call per text, as a naive user would write it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.tokenize_many([text])[0]


def naive_official(tokenizer, hyps: list[str], refs: list[str]) -> float:
    from rouge import Rouge

    rouge = Rouge()
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        hyp_joined = " ".join(tokenizer.tokenize_many([hyp])[0])
        ref_joined = " ".join(tokenizer.tokenize_many([ref])[0])
        try:
            scores = rouge.get_scores(hyp_joined, ref_joined)[0]
        except ValueError:  # rouge 1.0.1 raises on an empty hypothesis: it scores 0
            continue
        total += sum(scores[m]["f"] for m in ("rouge-1", "rouge-2", "rouge-l")) / 3
    return total / len(hyps) * 100


def naive_rouge_score(tokenizer, hyps: list[str], refs: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(METRICS, tokenizer=_PerTextTokenizer(tokenizer))
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        scores = scorer.score(ref, hyp)
        total += sum(scores[m].fmeasure for m in METRICS) / 3
    return total / len(hyps) * 100


NAIVE = {"official": naive_official, "rouge-score": naive_rouge_score}


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def first_turns(path: Path, split: str) -> tuple[list[str], list[str]]:
    rows = read_split(path, split)
    return [dialogue.split("\n")[0] for dialogue in rows["dialogue"]], list(rows["summary"])


def bench(name: str, tokenizer_name: str, hyps: list[str], refs: list[str], naive_cap: int) -> list[list]:
    tokenizer = get_tokenizer(tokenizer_name)
    tokenizer.tokenize_many(["warm up 준비"])  # Kiwi loads its model on first use
    lines = []
    for convention in ("official", "rouge-score"):
        cap = min(naive_cap, len(hyps))
        naive_final, naive_seconds = timed(NAIVE[convention], tokenizer, hyps[:cap], refs[:cap])
        scorer = RougeScorer(tokenizer, convention)
        cold, cold_seconds = timed(scorer.score, hyps, refs)
        warm_seconds = float("inf")
        for _ in range(3):
            scorer._lcs_cache.clear()
            warm, seconds = timed(scorer.score, hyps, refs)
            warm_seconds = min(warm_seconds, seconds)
        check = RougeScorer(tokenizer, convention).score(hyps[:cap], refs[:cap]).final
        if abs(check - naive_final) > 1e-6:
            raise SystemExit(f"{name} {convention}: ours {check} != naive {naive_final} on the same {cap} pairs")
        naive_rate = cap / naive_seconds
        cold_rate = len(hyps) / cold_seconds
        warm_rate = len(hyps) / warm_seconds
        lines.append([name, convention, len(hyps), f"{cold.final:.4f}", f"{naive_rate:,.0f} ({cap})",
                      f"{cold_rate:,.0f}", f"{warm_rate:,.0f}", f"{cold_rate / naive_rate:.1f}x",
                      f"{warm_rate / naive_rate:.1f}x"])
        assert abs(cold.final - warm.final) < 1e-9
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--naive-cap", type=int, default=2000, help="pairs timed for the naive way per set")
    args = parser.parse_args()
    from competition.cli.common import table

    rows = []
    ko_hyps, ko_refs = first_turns(args.data / "dialogsum-ko" / "dev.csv", "dev")
    rows += bench("ko dev (kiwi)", "kiwi", ko_hyps, ko_refs, args.naive_cap)
    en_hyps, en_refs = first_turns(args.data / "dialogsum-en" / "train.jsonl", "train")
    rows += bench("en train (english)", "english", en_hyps, en_refs, args.naive_cap)
    print(f"predictions = first turn; naive timed on the first min(rows, {args.naive_cap}) pairs, "
          f"ours on all rows; the naive and our finals agree to 1e-6 on the naive subsample; "
          f"warm = best of 3 calls with the LCS cache cleared")
    print(table(rows, ["data", "convention", "pairs", "final", "naive pairs/s (n)", "ours cold pairs/s",
                       "ours warm pairs/s", "cold/naive", "warm/naive"]))


if __name__ == "__main__":
    main()
