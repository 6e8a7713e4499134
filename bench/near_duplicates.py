"""Wall time of the near-duplicate search over train + dev + test (what `data check` runs), against
the naive way, on English DialogSum and on Korean dialogues of the same size.

- English: the 12,460 train rows, the 500 dev rows, and the dev dialogues again as a 500-row
  test set (the English test split is not shared): 13,460 rows.
- Korean: the shared Korean dev + test hold 998 dialogues (~9,400 turns); 13,460 distinct Korean
  dialogues are made of 6-12 turns drawn at random from all of them (seeded), so Kiwi sees real
  text at full size while few made dialogues share much. Split 12,460 / 500 / 500 like the English.

Timed: ours (shift.duplicate_report: Kiwi or English tokens, TF-IDF, blockwise search, clusters),
cold (first tokenisation in the process) and warm (tokens cached); the naive way is sklearn's
TfidfVectorizer on the same tokens plus sklearn's cosine_similarity as one dense rows x rows
matrix (train x train, dev x train, test x train), then each row's maximum.

    .venv/bin/python bench/near_duplicates.py [--data ../shared/data] [--skip-naive]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TRAIN, DEV, TEST = 12_460, 500, 500


def korean_rows(folder: Path, total: int, seed: int = 0) -> list[str]:
    real = pd.concat([pd.read_csv(folder / name, dtype=str, keep_default_na=False)["dialogue"]
                      for name in ("dev.csv", "test.csv")]).tolist()
    turns = [turn for text in real for turn in text.split("\n")]
    rng = np.random.default_rng(seed)
    made: dict[str, None] = {}
    while len(made) < total:
        picked = rng.integers(0, len(turns), size=int(rng.integers(6, 13)))
        made["\n".join(turns[i] for i in picked)] = None
    return list(made)


def english_rows(folder: Path) -> list[str]:
    from competition.data.loading import read_split

    train = read_split(folder / "train.jsonl", "train")["dialogue"].tolist()
    dev = read_split(folder / "dev.jsonl", "dev")["dialogue"].tolist()
    return train + dev + dev


def frames(texts: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def frame(part: list[str], prefix: str) -> pd.DataFrame:
        return pd.DataFrame({"fname": [f"{prefix}_{i}" for i in range(len(part))], "dialogue": part,
                             "summary": ["-"] * len(part)})

    return (frame(texts[:TRAIN], "train"), frame(texts[TRAIN:TRAIN + DEV], "dev"),
            frame(texts[TRAIN + DEV:TRAIN + DEV + TEST], "test"))


def naive(train: pd.DataFrame, dev: pd.DataFrame, test: pd.DataFrame, tokenizer: str) -> tuple[float, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    from competition.text.tokenizers import get_tokenizer

    start = time.perf_counter()
    tokens = get_tokenizer(tokenizer).tokenize_many
    vectorizer = TfidfVectorizer(analyzer=lambda t: t, sublinear_tf=True)
    fitted = vectorizer.fit_transform(tokens(list(train["dialogue"])))
    within = cosine_similarity(fitted)
    np.fill_diagonal(within, -1.0)
    train_best = within.max(axis=1)
    del within
    for frame in (dev, test):
        cosine_similarity(vectorizer.transform(tokens(list(frame["dialogue"]))), fitted).max(axis=1)
    return time.perf_counter() - start, train_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    from competition.data.shift import duplicate_report
    from competition.text.tokenizers import get_tokenizer

    data = Path(args.data)
    results = []
    for label, tokenizer, texts in (("English DialogSum", "english", english_rows(data / "dialogsum-en")),
                                    ("Korean (recombined)", "kiwi", korean_rows(data / "dialogsum-ko", TRAIN + DEV + TEST))):
        train, dev, test = frames(texts)
        if tokenizer == "kiwi":
            start = time.perf_counter()
            kiwi = get_tokenizer("kiwi")
            print(f"Kiwi model load: {time.perf_counter() - start:.1f} s (not counted below)")
            start = time.perf_counter()
            kiwi.tokenize_many(texts)
            print(f"Kiwi alone on the {len(texts):,} dialogues (uncached): {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        report, values = duplicate_report(train, dev, test, tokenizer, args.threshold)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        duplicate_report(train, dev, test, tokenizer, args.threshold)
        warm = time.perf_counter() - start
        naive_time, naive_best = (None, None) if args.skip_naive else naive(train, dev, test, tokenizer)
        if naive_best is not None:
            difference = float(np.abs(naive_best - values["train_to_train"]).max())
            print(f"{label}: largest |ours - naive| nearest cosine over train rows: {difference:.1e}")
        near = report["near_duplicates"]
        print(f"{label}: {near['clusters']:,} clusters (cosine >= {args.threshold:g}) holding "
              f"{near['rows_in_clusters']:,} rows, largest {near['largest']}")
        results.append((label, len(train) + len(dev) + len(test), cold, warm, naive_time))

    print()
    print(f"{'data':<22}{'rows':>8}{'ours cold':>11}{'ours warm':>11}{'naive':>9}{'naive/ours cold':>17}")
    for label, rows, cold, warm, naive_time in results:
        ratio = "" if naive_time is None else f"{naive_time / cold:.1f}x"
        naive_text = "" if naive_time is None else f"{naive_time:.1f} s"
        print(f"{label:<22}{rows:>8,}{cold:>9.1f} s{warm:>9.1f} s{naive_text:>9}{ratio:>17}")
    english, korean = results[0][2], results[1][2]
    print(f"targets: English cold < 15 s ({'met' if english < 15 else 'missed'}); Korean within 2x of English "
          f"({korean / english:.2f}x: {'met' if korean <= 2 * english else 'missed'})")


if __name__ == "__main__":
    main()
