"""Wall time of the model-free CV loop on the 12,460-row English DialogSum train (target: under
2 minutes on 2 cores): folds build + run(lead, retrieval) + cv, and the OOF finals it got.

Run: .venv/bin/python bench/cv.py [--data ../shared/data] [--k 5] [--rows 0] [--naive-cap 2000]

Workspace (a temporary folder): train = dialogsum-en/train.jsonl, dev = dialogsum-en/dev.jsonl as
a hold-out, test = the dev dialogues again under test_ ids; [metric] tokenizer = "english",
official convention. Each stage is the library function its command calls, in one process (the
metric's token cache is shared, as in `make submit`).

For scale, the naive way of scoring the OOF predictions of both candidates (per row: tokenize,
then `rouge` 1.0.1 `Rouge().get_scores`, capped at --naive-cap rows and extrapolated) is timed
against `cv` scoring them (with 95% bootstrap intervals) from the stored files.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[data]
train = "train.csv"

[metric]
tokenizer = "english"

[cv]
k = {k}

[candidates.lead]
kind = "lead"

[candidates.retrieval]
kind = "retrieval"
"""


def naive_seconds_per_row(predictions: list[str], references: list[str]) -> float:
    from rouge import Rouge

    from competition.text.tokenizers import get_tokenizer

    tokenizer, rouge = get_tokenizer("english"), Rouge()
    start = time.perf_counter()
    for hyp, ref in zip(predictions, references):
        hyp_joined = " ".join(tokenizer.tokenize_many([hyp])[0])
        ref_joined = " ".join(tokenizer.tokenize_many([ref])[0])
        try:
            rouge.get_scores(hyp_joined, ref_joined)
        except ValueError:  # empty hypothesis
            continue
    return (time.perf_counter() - start) / max(1, len(predictions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--rows", type=int, default=0, help="use the first N train rows (0 = all)")
    parser.add_argument("--naive-cap", type=int, default=2000, help="rows scored the naive way per candidate")
    args = parser.parse_args()

    from competition.workspace.config import load_config
    from competition.results.cv import leaderboard
    from competition.data.loading import load_from_config, read_split
    from competition.data.folds import build_folds, labelled_rows
    from competition.data.predictions import load_oof
    from competition.run.runner import run_candidates

    data = Path(args.data) / "dialogsum-en"
    train = read_split(data / "train.jsonl", "train")
    if args.rows:
        train = train.head(args.rows)
    dev = read_split(data / "dev.jsonl", "dev")
    test = dev.assign(fname="test_" + dev["fname"])
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "data").mkdir()
        train.to_csv(root / "data" / "train.csv", index=False)
        dev.to_csv(root / "data" / "dev.csv", index=False)
        test[["fname", "dialogue"]].to_csv(root / "data" / "test.csv", index=False)
        test[["fname"]].assign(summary="").to_csv(root / "data" / "sample_submission.csv", index=False)
        (root / "competition.toml").write_text(CONFIG.format(k=args.k), encoding="utf-8")
        config = load_config(root / "competition.toml")

        timings = {}
        start = time.perf_counter()
        build_folds(config, labelled_rows(config, load_from_config(config)))
        timings["folds build"] = time.perf_counter() - start
        start = time.perf_counter()
        run_candidates(config, ["lead", "retrieval"], progress=False, echo=lambda line: None)
        timings["run lead, retrieval"] = time.perf_counter() - start
        start = time.perf_counter()
        board = leaderboard(config)
        timings["cv"] = time.perf_counter() - start
        total = sum(timings.values())

        print(f"English DialogSum: {len(train)} train rows, k = {args.k}, {len(dev)} dev (hold-out), "
              f"{len(test)} test; {os.cpu_count()} CPU(s) visible")
        for stage, seconds in timings.items():
            print(f"  {stage:<22} {seconds:8.2f} s")
        print(f"  {'total':<22} {total:8.2f} s  (target < 120 s: {'met' if total < 120 else 'missed'})")
        print("OOF finals (official convention, english tokens):")
        for entry in board:
            ci = entry["ci95"]
            print(f"  {entry['name']:<10} OOF {entry['oof']['final']:6.2f}  [{ci[0]:.2f}, {ci[1]:.2f}]  "
                  f"folds {entry['fold_final_mean']:.2f}±{entry['fold_final_std']:.2f}  dev {entry['dev_final']:.2f}"
                  f"  {'complete' if entry['complete'] else 'incomplete'}")

        if args.naive_cap:
            references = train.set_index("fname")["summary"]
            naive = 0.0
            for name in ("lead", "retrieval"):
                oof = load_oof(config, name).head(args.naive_cap)
                naive += naive_seconds_per_row(oof["summary"].tolist(), references.loc[oof["fname"]].tolist()) * len(train)
            print(f"naive scoring of both OOF sets (rouge 1.0.1 per row, extrapolated from {args.naive_cap} rows): "
                  f"{naive:.2f} s vs cv {timings['cv']:.2f} s with intervals ({naive / timings['cv']:.1f}x)")


if __name__ == "__main__":
    main()
