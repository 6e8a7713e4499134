"""Wall time of MBR over 8 members x 12,460 rows (English DialogSum train OOF) against the naive way.

The members are real OOF predictions: 8 model-free baseline variants (lead with 1-4 turns and
two turn formats; retrieval with other n-grams, min_df and top_k) run by the project's runner
(`competition run`) on k folds of ../shared/data/dialogsum-en/train.jsonl in a temporary
workspace ([metric] tokenizer = "english"; test = the 500 English dev dialogues under test_ ids,
no dev hold-out, to keep the runs short).

Timed on the members' OOF files:
- ours: `mbr_select` over the 8 OOF sets with a fresh scorer (tokenisation included);
- `competition ensemble` end to end (`run_ensemble`, method mbr: member scores, nested choice,
  per-fold and final test outputs, files);
- the naive way: rouge-score's RougeScorer on every ordered member pair of a row, tokenising both
  texts each time. It is measured on --naive-rows sampled rows and scaled to all rows (printed as
  such, with the measured per-pair rate).

    .venv/bin/python bench/ensemble.py [--rows N] [--k 5] [--naive-rows 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from competition.text.mbr import default_workers, mbr_select

ROOT = Path(__file__).resolve().parents[1]
FULL_ROWS = 12_460  # English DialogSum train
# One [candidates.NAME] table per member: lead variants, then retrieval variants.
MEMBERS = {
    "lead1": 'kind = "lead"\nturns = 1',
    "lead2": 'kind = "lead"\nturns = 2',
    "lead3_text": 'kind = "lead"\nturns = 3\nturn_format = "{text}"',
    "lead4_text": 'kind = "lead"\nturns = 4\nturn_format = "{text}"',
    "retrieval_uni": 'kind = "retrieval"\nngram_max = 1',
    "retrieval_bi": 'kind = "retrieval"\nngram_max = 2',
    "retrieval_bi_top5": 'kind = "retrieval"\nngram_max = 2\ntop_k = 5',
    "retrieval_tri_top3": 'kind = "retrieval"\nngram_max = 3\nmin_df = 2\ntop_k = 3',
}


def workspace_config(k: int, convention: str) -> str:
    tables = "\n".join(f"[candidates.{name}]\n{table}\n" for name, table in MEMBERS.items())
    return (f'[data]\ntrain = "train.csv"\ndev = ""\n\n[metric]\ntokenizer = "english"\nconvention = "{convention}"\n\n'
            f'[cv]\nk = {k}\nbootstrap = 200\n\n{tables}\n'
            f'[ensembles.mbr8]\nmembers = {list(MEMBERS)!r}\nmethod = "mbr"\n').replace("'", '"')


def naive_seconds(outputs: list[list[str]], rows: list[int]) -> float:
    """rouge-score, tokenising per pair: every ordered pair of members on `rows`, then the argmax."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    start = time.perf_counter()
    for row in rows:
        texts = [member[row] for member in outputs]
        utility = np.zeros(len(texts))
        for i, hyp in enumerate(texts):
            for j, ref in enumerate(texts):
                if i != j:
                    scores = scorer.score(ref, hyp)
                    utility[i] += np.mean([s.fmeasure for s in scores.values()])
        int(np.argmax(utility))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rows", type=int, default=0, help="use the first N train rows (0 = all 12,460)")
    parser.add_argument("--k", type=int, default=5, help="folds the members are run on")
    parser.add_argument("--naive-rows", type=int, default=200, help="rows timed the naive way, then scaled")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--convention", default="official", choices=["official", "rouge-score"])
    args = parser.parse_args()

    from competition.workspace.config import load_config
    from competition.data.loading import load_from_config, read_split
    from competition.run.ensemble import run_ensemble
    from competition.data.folds import build_folds, labelled_rows
    from competition.text.metric import RougeScorer
    from competition.data.predictions import load_oof
    from competition.run.runner import run_candidates

    english = Path(args.data) / "dialogsum-en"
    train = read_split(english / "train.jsonl", "train")
    if args.rows:
        train = train.head(args.rows)
    test = read_split(english / "dev.jsonl", "dev")
    test = test.assign(fname="test_" + test["fname"])[["fname", "dialogue"]]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "data").mkdir()
        train.to_csv(root / "data" / "train.csv", index=False)
        test.to_csv(root / "data" / "test.csv", index=False)
        test[["fname"]].assign(summary="").to_csv(root / "data" / "sample_submission.csv", index=False)
        (root / "competition.toml").write_text(workspace_config(args.k, args.convention), encoding="utf-8")
        config = load_config(root / "competition.toml")

        start = time.perf_counter()
        build_folds(config, labelled_rows(config, load_from_config(config)))
        run_candidates(config, list(MEMBERS), progress=False, echo=lambda line: None)
        print(f"members: {len(MEMBERS)} baseline variants run on {args.k} folds of {len(train)} English train rows "
              f"(+ {len(test)} test rows) in {time.perf_counter() - start:.1f} s")

        fnames = train["fname"].tolist()
        outputs = [load_oof(config, name).set_index("fname")["summary"].loc[fnames].fillna("").tolist()
                   for name in MEMBERS]
        rows = len(fnames)
        distinct = np.mean([len({member[row] for member in outputs}) for row in range(rows)])
        print(f"distinct outputs per row: {distinct:.2f} of {len(outputs)}")

        scorer = RougeScorer("english", args.convention, "mean")  # fresh: tokenisation is timed too
        start = time.perf_counter()
        chosen = mbr_select(outputs, scorer, utility="final", workers=args.workers)
        ours = time.perf_counter() - start
        ordered_pairs = len(outputs) * (len(outputs) - 1)
        references = [[summary] for summary in train["summary"]]
        finals = {name: scorer.score(member, references).final for name, member in zip(MEMBERS, outputs)}
        mbr_final = scorer.score([outputs[c][row] for row, c in enumerate(chosen)], references).final
        print("member OOF finals: " + ", ".join(f"{name} {final:.2f}" for name, final in finals.items())
              + f"; MBR (uniform) {mbr_final:.2f}")
        target = (f"target < 30 s: {'met' if ours < 30 else 'missed'}" if rows >= FULL_ROWS
                  else f"the 30 s target is for all {FULL_ROWS:,} rows")
        print(f"ours  (mbr_select, {args.convention}, {args.workers} worker(s)): {ours:.1f} s for {rows} rows "
              f"({ours / (rows * ordered_pairs) * 1e6:.1f} us per ordered pair, amortised; {target})")

        start = time.perf_counter()
        report = run_ensemble(config, "mbr8", workers=args.workers)
        print(f"competition ensemble mbr8 (nested OOF, {args.k} fold + final test outputs, files): "
              f"{time.perf_counter() - start:.1f} s; nested OOF final {report['oof_final']:.2f}, "
              f"oracle {report['diagnostics']['oracle_final']:.2f}")

        sample = np.random.default_rng(0).choice(rows, min(args.naive_rows, rows), replace=False)
        naive = naive_seconds(outputs, sample.tolist())
        per_pair = naive / (len(sample) * ordered_pairs)
        scaled = per_pair * rows * ordered_pairs
        print(f"naive (rouge-score, tokenise per pair, {ordered_pairs} ordered pairs a row): measured {naive:.2f} s "
              f"on {len(sample)} sampled rows ({len(sample) * ordered_pairs} pairs, {per_pair * 1e6:.0f} us per pair); "
              f"scaled to {rows} rows: {scaled:.0f} s")
        print(f"ratio naive (scaled) / ours: {scaled / ours:.1f}x")


if __name__ == "__main__":
    main()
