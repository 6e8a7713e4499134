"""What the submission log says: CV against the leaderboard, and which two files to pick at the end.

The public leaderboard scores a small part of the test set, so a public gain that the OOF score does
not share is more likely noise than progress. The numbers here make that visible: correlations of
CV with public and private scores (with how many points they rest on), the public gains CV does
not back, and the classic final pick: the best-CV submission plus the best public one whose CV is
within the best's 95% interval. "CV" for the picks is the score [cv] pick_by names: by default the
test-matched final (README "Why folds group near-duplicates"); a row logged before that score
existed falls back to its OOF final.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .choices import HISTORY_SORT_KEYS
from .config import Config
from .errors import SubmissionError
from .submission import read_log

SORT_KEYS = HISTORY_SORT_KEYS
# Used for "CV agrees" when the best-CV submission has no 95% interval in the log.
DEFAULT_CV_TOLERANCE = 1.0
# Fewer points than this and a correlation says nothing.
MIN_POINTS = 3


def _float(text: str) -> float | None:
    text = str(text).strip()
    return float(text) if text else None


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


# (gap name, minuend, subtrahend): every pair of scores a submission can hold, None where one is unknown.
GAPS = (("dev_minus_cv", "dev", "cv"), ("public_minus_cv", "public", "cv"), ("public_minus_dev", "public", "dev"),
        ("private_minus_cv", "private", "cv"), ("private_minus_dev", "private", "dev"),
        ("private_minus_public", "private", "public"))


def history_rows(log: pd.DataFrame) -> list[dict]:
    """One dict per logged submission, scores as floats (None where unknown), with the gaps."""
    rows = []
    for record in log.to_dict("records"):
        row = {
            "id": record["id"], "created_at": record["created_at"], "source": record["source"],
            "file": record["file"], "cv": _float(record["oof_final"]), "dev": _float(record["dev_final"]),
            "public": _float(record["public"]), "private": _float(record["private"]),
            "ci95": [_float(record["oof_ci95_low"]), _float(record["oof_ci95_high"])],
            "matched": _float(record["matched_final"]),
            "matched_ci95": [_float(record["matched_ci95_low"]), _float(record["matched_ci95_high"])],
            "dev_novel": _float(record["dev_novel_final"]),
        }
        row.update({name: _gap(row[high], row[low]) for name, high, low in GAPS})
        rows.append({**row, "note": record["note"]})
    return rows


def sort_rows(rows: list[dict], key: str = "id") -> list[dict]:
    """By id (oldest first), or best first by cv, public or private (unknown values last)."""
    if key not in SORT_KEYS:
        raise SubmissionError(f"cannot sort by {key!r}: choose one of {', '.join(SORT_KEYS)}")
    if key == "id":
        return sorted(rows, key=lambda row: int(row["id"]))
    return sorted(rows, key=lambda row: (row[key] is None, -(row[key] or 0.0), int(row["id"])))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's coefficient needs)."""
    return pd.Series(values).rank(method="average").to_numpy()


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return None if denominator == 0 else float((x * y).sum() / denominator)


def correlation(rows: Sequence[dict], x_key: str = "cv", y_key: str = "public") -> dict:
    """Pearson and Spearman of x with y over the submissions holding both; None below MIN_POINTS
    points or when one side is constant."""
    pairs = [(row[x_key], row[y_key]) for row in rows if row[x_key] is not None and row[y_key] is not None]
    result = {"n": len(pairs), "pearson": None, "spearman": None}
    if len(pairs) >= MIN_POINTS:
        x, y = np.array(pairs, dtype=float).T
        result["pearson"] = _pearson(x, y)
        result["spearman"] = _pearson(_ranks(x), _ranks(y))
    return result


def noise_warnings(rows: Sequence[dict]) -> list[str]:
    """Steps where a submission beat the best public score so far while its CV did not beat that
    submission's CV: public gains not backed by CV (chasing public noise)."""
    warnings = []
    best = None
    for row in sort_rows([r for r in rows if r["public"] is not None and r["cv"] is not None], "id"):
        if best is not None and row["public"] > best["public"]:
            cv_change = row["cv"] - best["cv"]
            if cv_change <= 0:
                warnings.append(f"#{row['id']} ({row['source']}) raised the best public score by "
                                f"{row['public'] - best['public']:+.4f} over #{best['id']} while its CV changed "
                                f"{cv_change:+.4f}: a public gain not backed by CV is likely noise")
        if best is None or row["public"] > best["public"]:
            best = row
    public = correlation(rows, "cv", "public")
    if public["spearman"] is not None and public["n"] >= 5 and public["spearman"] < 0.3:
        warnings.append(f"CV and public scores barely agree (Spearman {public['spearman']:.2f} over {public['n']} "
                        f"submissions): trust CV, the public board is a small sample")
    return warnings


def _pick_score(row: dict, pick_by: str) -> tuple[float | None, list]:
    """(score, 95% interval) a pick compares: the test-matched final when pick_by says so and the
    row has one, else the OOF final."""
    if pick_by == "test_matched" and row.get("matched") is not None:
        return row["matched"], row["matched_ci95"]
    return row["cv"], row["ci95"]


def final_picks(rows: Sequence[dict], tolerance: float = DEFAULT_CV_TOLERANCE, pick_by: str = "test_matched") -> dict:
    """The two final submissions: the best by CV, and the best public score among the others whose
    CV agrees (at least the low end of the best's 95% interval, else best CV - tolerance). CV is
    the test-matched final (pick_by "test_matched", where logged) or the OOF final ("oof")."""
    matched = pick_by == "test_matched" and any(row.get("matched") is not None for row in rows)
    label = "test-matched CV" if matched else "CV"
    score = {row["id"]: _pick_score(row, pick_by) for row in rows}
    scored = sorted((row for row in rows if score[row["id"]][0] is not None),
                    key=lambda row: (-score[row["id"]][0], int(row["id"])))
    if not scored:
        return {"best_cv": None, "best_public_agreeing": None, "cv_threshold": None, "pick_by": pick_by,
                "advice": "no submission has a CV score yet: run `competition cv`, then submit"}
    best_cv = scored[0]
    best_score, (low, _) = score[best_cv["id"]]
    threshold = low if low is not None else best_score - tolerance
    agreeing = [row for row in sort_rows(list(rows), "public")
                if row["public"] is not None and score[row["id"]][0] is not None
                and score[row["id"]][0] >= threshold and row["id"] != best_cv["id"]]
    second = agreeing[0] if agreeing else None
    lines = [f"pick 1 (best {label}): #{best_cv['id']} {best_cv['source']} {label} {best_score:.4f}"
             + (f", public {best_cv['public']:.4f}" if best_cv["public"] is not None else "")]
    if second:
        lines.append(f"pick 2 (best public with {label} >= {threshold:.4f}): #{second['id']} {second['source']} "
                     f"{label} {score[second['id']][0]:.4f}, public {second['public']:.4f}")
    else:
        others = [row for row in scored if row["id"] != best_cv["id"]]
        unrecorded = [row for row in others if row["public"] is None and score[row["id"]][0] >= threshold]
        if not others:
            lines.append("pick 2: no other submission yet; submit another strong source")
        elif unrecorded:
            lines.append(f"pick 2: #{unrecorded[0]['id']} {unrecorded[0]['source']} has {label} >= {threshold:.4f} "
                         f"but no public score: record it (`competition lb record {unrecorded[0]['id']} --public "
                         f"SCORE`)")
        else:
            lines.append(f"pick 2: no other submission has {label} >= {threshold:.4f}; take the next best "
                         f"{label}: #{others[0]['id']} {others[0]['source']} {score[others[0]['id']][0]:.4f}")
    best_public = sort_rows([row for row in rows if row["public"] is not None], "public")
    if best_public and score[best_public[0]["id"]][0] is not None and score[best_public[0]["id"]][0] < threshold:
        top = best_public[0]
        lines.append(f"not recommended: #{top['id']} has the best public {top['public']:.4f} but {label} "
                     f"{score[top['id']][0]:.4f} < {threshold:.4f}")
    return {"best_cv": best_cv, "best_public_agreeing": second, "cv_threshold": threshold, "pick_by": pick_by,
            "advice": "\n".join(lines)}


def history_report(config: Config, sort: str = "id", tolerance: float = DEFAULT_CV_TOLERANCE) -> dict:
    """Everything `competition history` shows, as plain data."""

    rows = history_rows(read_log(config))
    return {
        "submissions": sort_rows(rows, sort),
        "correlation": {"public": correlation(rows, "cv", "public"), "private": correlation(rows, "cv", "private")},
        "warnings": noise_warnings(rows),
        "picks": final_picks(rows, tolerance, config.cv.pick_by),
    }


# One colour per score kind, the same in both panels.
SCORE_COLOURS = {"cv": "tab:blue", "matched": "tab:cyan", "dev": "tab:green", "public": "tab:orange",
                 "private": "tab:red"}
SCORE_LABELS = {"cv": "CV (OOF final)", "matched": "test-matched CV", "dev": "dev final", "public": "public",
                "private": "private"}


def label_heights(points: list[tuple[float, float]], height: float) -> list[float]:
    """Label heights for points sorted by x: a label moves up until it is `height` clear of every
    earlier label whose x is within a small distance (so ids never print over each other)."""
    placed: list[tuple[float, float]] = []
    heights = []
    xs = [x for x, _ in points]
    near = (max(xs) - min(xs)) * 0.04 if len(xs) > 1 else 1.0
    for x, y in points:
        level = y
        while any(abs(x - px) <= near and abs(level - py) < height for px, py in placed):
            level += height
        placed.append((x, level))
        heights.append(level)
    return heights


def plot_history(rows: Sequence[dict], path: str | Path) -> Path:
    """A PNG: CV against public and private scores with the y = x diagonal (each point labelled with
    its submission id, labels kept apart), and every score over the submissions in order; each
    score kind has one colour in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sort_rows(list(rows), "id")
    if not rows:
        raise SubmissionError("no submissions in the log yet: nothing to plot")
    figure, (scatter, timeline) = plt.subplots(1, 2, figsize=(13, 5.5))
    values = []
    for key, marker in (("public", "o"), ("private", "s")):
        points = sorted((row["cv"], row[key], row["id"]) for row in rows if row["cv"] is not None and row[key] is not None)
        if not points:
            continue
        scatter.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, color=SCORE_COLOURS[key],
                        label=f"{SCORE_LABELS[key]} vs CV", zorder=3)
        values += [v for p in points for v in p[:2]]
        span = (max(p[1] for p in points) - min(p[1] for p in points)) or 1.0
        shift = ((max(p[0] for p in points) - min(p[0] for p in points)) or 1.0) * 0.01
        for (x, y, label), level in zip(points, label_heights([(p[0], p[1]) for p in points], span * 0.045)):
            scatter.annotate(label.lstrip("0") or "0", (x, y), xytext=(x + shift, level), textcoords="data", fontsize=7,
                             color=SCORE_COLOURS[key], ha="left", va="bottom",
                             arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5} if level != y else None)
    if values:
        low, high = min(values), max(values)
        margin = (high - low) * 0.05 or 1.0
        scatter.plot([low - margin, high + margin], [low - margin, high + margin], "k--", linewidth=1, label="y = x")
        scatter.legend(loc="upper left", fontsize=8)
    else:
        scatter.text(0.5, 0.5, "no leaderboard scores recorded yet", ha="center", transform=scatter.transAxes)
    scatter.set_xlabel("CV (OOF final, ROUGE x 100)")
    scatter.set_ylabel("leaderboard final (ROUGE x 100)")
    scatter.set_title("CV vs leaderboard (labels: submission id)")
    positions = list(range(len(rows)))
    for key in ("cv", "matched", "dev", "public", "private"):
        series = [np.nan if row.get(key) is None else row[key] for row in rows]
        if not all(np.isnan(series)):
            timeline.plot(positions, series, marker="o", color=SCORE_COLOURS[key], label=SCORE_LABELS[key])
    timeline.set_xticks(positions)
    timeline.set_xticklabels([row["id"] for row in rows], rotation=90, fontsize=7)
    timeline.set_xlabel("submission id")
    timeline.set_ylabel("final (ROUGE x 100)")
    timeline.set_title("scores over time")
    timeline.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path
