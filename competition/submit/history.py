"""What the submission log says: CV against the leaderboard, and which two files to pick at the end.

The public leaderboard scores a small part of the test set, so a public gain that the OOF score does
not share is more likely noise than progress. The numbers here make that visible: correlations of
CV with public and private scores (with how many points they rest on), the public gains CV does
not back, and the classic final pick: the best-CV submission plus the best public one whose CV is
within the best's 95% interval. "CV" everywhere here (ranking, gaps, warnings, plot axis, picks) is
the one score [cv] pick_by names: by default the test-matched final (README "Why folds group
near-duplicates"), the OOF final shown beside it; a row logged before that score existed falls back
to its OOF final. Once two submissions have a public score, the median public - CV offset turns
every CV into an expected public score (public_calibration).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..choices import HISTORY_SORT_KEYS
from ..errors import SubmissionError
from ..results.cv import pick_score
from ..workspace.config import Config
from .submission import read_log

SORT_KEYS = HISTORY_SORT_KEYS
# Used for "CV agrees" when the best-CV submission has no 95% interval in the log.
DEFAULT_CV_TOLERANCE = 1.0
# Fewer points than this and a correlation says nothing.
MIN_POINTS = 3
# Public scores needed before CV is turned into an expected public score.
MIN_CALIBRATION = 2
# The band around the median offset: Tukey's "far out" fences, Q1 - 3 IQR .. Q3 + 3 IQR. The 1.5 IQR
# fences flag a normal offset in ~28% of 10-submission logs, these in ~5% (simulated); they cannot
# flag anything with four or fewer offsets.
FENCE_IQRS = 3.0
# The score each [cv] pick_by names, and how tables and axes call it.
CV_NAMES = {"test_matched": "test-matched CV", "oof": "OOF CV"}


def _float(text: str) -> float | None:
    text = str(text).strip()
    return float(text) if text else None


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


# (gap name, minuend, subtrahend): every pair of scores a submission can hold, None where one is unknown.
GAPS = (("dev_minus_cv", "dev", "cv"), ("public_minus_cv", "public", "cv"), ("public_minus_dev", "public", "dev"),
        ("private_minus_cv", "private", "cv"), ("private_minus_dev", "private", "dev"),
        ("private_minus_public", "private", "public"))


def history_rows(log: pd.DataFrame, pick_by: str = "test_matched") -> list[dict]:
    """One dict per logged submission, scores as floats (None where unknown), with the gaps.

    "cv" (with "ci95") is the one CV of every comparison: the score `pick_by` names, "cv_by" says
    which it is for the row (a row logged before test-matched finals existed falls back to "oof");
    "oof" and "matched" keep both finals."""
    rows = []
    for record in log.to_dict("records"):
        row = {
            "id": record["id"], "created_at": record["created_at"], "source": record["source"],
            "file": record["file"], "oof": _float(record["oof_final"]), "dev": _float(record["dev_final"]),
            "public": _float(record["public"]), "private": _float(record["private"]),
            "oof_ci95": [_float(record["oof_ci95_low"]), _float(record["oof_ci95_high"])],
            "matched": _float(record["matched_final"]),
            "matched_ci95": [_float(record["matched_ci95_low"]), _float(record["matched_ci95_high"])],
            "dev_novel": _float(record["dev_novel_final"]),
        }
        row["cv_by"] = "test_matched" if pick_by == "test_matched" and row["matched"] is not None else "oof"
        row["cv"], row["ci95"] = _pick_score(row, pick_by)
        row.update({name: _gap(row[high], row[low]) for name, high, low in GAPS})
        rows.append({**row, "note": record["note"]})
    return rows


def cv_label(rows: Sequence[dict]) -> str:
    """What "CV" is in these rows: the test-matched final, the OOF final, or a mix (older rows)."""
    kinds = {row["cv_by"] for row in rows if row["cv"] is not None}
    if kinds == {"test_matched"}:
        return CV_NAMES["test_matched"]
    if "test_matched" in kinds:
        return f"{CV_NAMES['test_matched']} (OOF where not logged)"
    return CV_NAMES["oof"]


def other_score(row: dict) -> tuple[str, float | None]:
    """(name, value) of the final shown beside the row's CV: OOF beside test-matched and back."""
    return ("OOF", row["oof"]) if row["cv_by"] == "test_matched" else ("test-matched", row["matched"])


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


def noise_warnings(rows: Sequence[dict], calibration: dict | None = None) -> list[str]:
    """Steps where a submission beat the best public score so far while its CV did not beat that
    submission's CV: public gains not backed by CV (chasing public noise); with a calibration, each
    public score outside its expected band."""
    warnings = []
    best = None
    label = cv_label(rows)
    for row in sort_rows([r for r in rows if r["public"] is not None and r["cv"] is not None], "id"):
        if best is not None and row["public"] > best["public"]:
            cv_change = row["cv"] - best["cv"]
            if cv_change <= 0:
                name, value = other_score(row)
                _, best_value = other_score(best)
                beside = (f" ({name} final {value - best_value:+.4f})"
                          if value is not None and best_value is not None else "")
                warnings.append(f"#{row['id']} ({row['source']}) raised the best public score by "
                                f"{row['public'] - best['public']:+.4f} over #{best['id']} while its {label} changed "
                                f"{cv_change:+.4f}{beside}: a public gain not backed by CV is likely noise")
        if best is None or row["public"] > best["public"]:
            best = row
    public = correlation(rows, "cv", "public")
    if public["spearman"] is not None and public["n"] >= 5 and public["spearman"] < 0.3:
        warnings.append(f"{label} and public scores barely agree (Spearman {public['spearman']:.2f} over "
                        f"{public['n']} submissions): trust CV, the public board is a small sample")
    for row in sort_rows(list(rows), "id"):
        if row.get("lb_outlier"):
            low, high = row["expected_public"]["band"]
            warnings.append(f"#{row['id']} ({row['source']}) public {row['public']:.4f} is outside its expected band "
                            f"[{low:.4f}, {high:.4f}] ({label} {row['cv']:.4f} + the logged offsets): likely "
                            f"public-LB noise, not a better or worse source")
    return warnings


def public_calibration(rows: Sequence[dict], pick_by: str = "test_matched") -> dict | None:
    """The public - CV offset of the logged submissions, CV being the score `pick_by` names (rows
    without it are left out); None below MIN_CALIBRATION submissions with both.

    median: the offset an expected public score adds to a CV. The spread is the interquartile range
    (numpy's linear quartiles) and the band Tukey's far-out fences, Q1 - 3 IQR to Q3 + 3 IQR: an
    offset outside them is an outlier (impossible with four or fewer offsets)."""
    key = "matched" if pick_by == "test_matched" else "oof"
    offsets = {row["id"]: row["public"] - row[key] for row in sort_rows(list(rows), "id")
               if row["public"] is not None and row[key] is not None}
    if len(offsets) < MIN_CALIBRATION:
        return None
    q1, median, q3 = (float(value) for value in np.percentile(list(offsets.values()), [25, 50, 75]))
    iqr = q3 - q1
    return {"score": pick_by, "n": len(offsets), "median": median, "q1": q1, "q3": q3, "iqr": iqr,
            "low": q1 - FENCE_IQRS * iqr, "high": q3 + FENCE_IQRS * iqr, "offsets": offsets}


def expected_public(score: float | None, calibration: dict | None) -> dict | None:
    """A CV score's expected public score (score + median offset) and band (score + the fences)."""
    if score is None or calibration is None:
        return None
    return {"expected": score + calibration["median"],
            "band": [score + calibration["low"], score + calibration["high"]]}


def describe_calibration(calibration: dict | None, label: str = "CV") -> str:
    """One line: how an expected public score is made from `label`, or what it still needs."""
    if calibration is None:
        return (f"expected public: needs {MIN_CALIBRATION} submissions with a public score and a {label} "
                f"(`competition lb record ID --public SCORE`)")
    return (f"expected public = {label} {calibration['median']:+.2f} (median public - CV offset of "
            f"{calibration['n']} submissions; IQR {calibration['iqr']:.2f}); band: offsets' Q1 - {FENCE_IQRS:g} IQR "
            f"to Q3 + {FENCE_IQRS:g} IQR ({calibration['low']:+.2f} to {calibration['high']:+.2f}); ! = public outside "
            f"it")


def calibrate_rows(rows: list[dict], calibration: dict | None) -> list[dict]:
    """Each row with its "expected_public" (None where its calibrated score is unknown) and
    "lb_outlier": its public score lies outside its band."""
    key = "matched" if calibration and calibration["score"] == "test_matched" else "oof"
    for row in rows:
        row["expected_public"] = expected_public(row[key], calibration)
        band = (row["expected_public"] or {}).get("band")
        row["lb_outlier"] = bool(band and row["public"] is not None and not band[0] <= row["public"] <= band[1])
    return rows


def expect_public(config: Config, board: list[dict]) -> dict | None:
    """Add "expected_public" to every `cv` leaderboard entry from the submission log's calibration
    ({"expected", "band", "calibration": {n, median, iqr, ...}}, None without one); returns it."""
    pick_by = config.cv.pick_by
    calibration = public_calibration(history_rows(read_log(config), pick_by), pick_by)
    summary = None if calibration is None else {key: value for key, value in calibration.items() if key != "offsets"}
    for entry in board:
        matched = entry.get("test_matched") if pick_by == "test_matched" else None
        score = pick_score(entry, pick_by) if pick_by == "oof" or matched else None
        expected = expected_public(score, calibration)
        entry["expected_public"] = None if expected is None else {**expected, "calibration": summary}
    return calibration


def _pick_score(row: dict, pick_by: str) -> tuple[float | None, list]:
    """(score, 95% interval) a pick compares: the test-matched final when pick_by says so and the
    row has one, else the OOF final."""
    if pick_by == "test_matched" and row.get("matched") is not None:
        return row["matched"], row["matched_ci95"]
    return row["oof"], row["oof_ci95"]


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

    rows = history_rows(read_log(config), config.cv.pick_by)
    calibration = public_calibration(rows, config.cv.pick_by)
    calibrate_rows(rows, calibration)
    return {
        "pick_by": config.cv.pick_by,
        "cv_label": cv_label(rows),
        "submissions": sort_rows(rows, sort),
        "correlation": {"public": correlation(rows, "cv", "public"), "private": correlation(rows, "cv", "private")},
        "calibration": calibration,
        "warnings": noise_warnings(rows, calibration),
        "picks": final_picks(rows, tolerance, config.cv.pick_by),
    }


# One colour per score kind, the same in both panels ("other": the final shown beside the CV).
SCORE_COLOURS = {"cv": "tab:blue", "other": "tab:cyan", "dev": "tab:green", "public": "tab:orange",
                 "private": "tab:red", "expected": "0.45"}
SCORE_LABELS = {"dev": "dev final", "public": "public", "private": "private"}
# Id labels: dark text on a pale box, readable over any marker colour.
LABEL_STYLE = {"fontsize": 8, "color": "0.1", "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "white",
                                                        "edgecolor": "none", "alpha": 0.8}}


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


def _limits(values: Sequence[float], least: float = 1.0) -> tuple[float, float]:
    """Axis limits around `values` with 8% margins, at least `least` wide (a single point centred)."""
    low, high = min(values), max(values)
    span = max(high - low, least)
    middle = (low + high) / 2
    return middle - span * 0.58, middle + span * 0.58


def _short_id(identifier: str) -> str:
    return identifier.lstrip("0") or "0"


def _scatter_panel(axis, rows: list[dict], calibration: dict | None, label: str) -> None:
    """CV against public and private, axes fitted to the points: the y = x + median offset line and
    its band when calibrated (y = x only where it crosses the view, so a far-off board never squeezes
    the points into a corner)."""
    series = {key: sorted((row["cv"], row[key], row["id"]) for row in rows
                          if row["cv"] is not None and row[key] is not None) for key in ("public", "private")}
    points = [point for key in series for point in series[key]]
    if not points:
        axis.text(0.5, 0.5, "no leaderboard scores recorded yet", ha="center", transform=axis.transAxes)
        axis.set_xlabel(f"{label} (ROUGE x 100)")
        return
    x_limits = _limits([p[0] for p in points])
    offsets = [calibration["median"]] if calibration else []
    # The view holds the points and the expected-public line over their CV range.
    cvs = (min(p[0] for p in points), max(p[0] for p in points))
    y_limits = _limits([p[1] for p in points] + [x + offset for x in cvs for offset in offsets])
    for key, marker in (("public", "o"), ("private", "s")):
        if series[key]:
            axis.scatter([p[0] for p in series[key]], [p[1] for p in series[key]], marker=marker, s=36,
                         color=SCORE_COLOURS[key], label=f"{SCORE_LABELS[key]}", zorder=3)
    outliers = [(row["cv"], row["public"]) for row in rows if row.get("lb_outlier")]
    if outliers:
        axis.scatter(*zip(*outliers), s=160, facecolors="none", edgecolors="black", linewidths=1.2,
                     label="public outside its band", zorder=4)
    xs = np.array(x_limits)
    if calibration:
        axis.plot(xs, xs + calibration["median"], "--", color=SCORE_COLOURS["expected"], linewidth=1.2,
                  label=f"expected public = CV {calibration['median']:+.2f} (median offset, n={calibration['n']})")
        axis.fill_between(xs, xs + calibration["low"], xs + calibration["high"], color=SCORE_COLOURS["expected"],
                          alpha=0.15, linewidth=0,
                          label=f"band: offsets' Q1 - {FENCE_IQRS:g} IQR .. Q3 + {FENCE_IQRS:g} IQR")
    notes = [] if calibration else [f"expected public: from {MIN_CALIBRATION} public scores on"]
    if max(x_limits[0], y_limits[0]) < min(x_limits[1], y_limits[1]):
        axis.plot(xs, xs, ":", color="black", linewidth=1, label="y = x")
    else:
        notes.append("y = x lies outside this view")
    for note in notes:  # in the legend, below the axes: never over a point
        axis.plot([], [], " ", label=note)
    height = (y_limits[1] - y_limits[0]) * 0.05
    shift = (x_limits[1] - x_limits[0]) * 0.012
    # One id label per submission: at its public point, at its private point only without one.
    with_public = {identifier for _, _, identifier in series["public"]}
    labelled = sorted(series["public"] + [p for p in series["private"] if p[2] not in with_public])
    for (x, y, identifier), level in zip(labelled, label_heights([p[:2] for p in labelled], height)):
        axis.annotate(_short_id(identifier), (x, y), xytext=(x + shift, level + height * 0.2), textcoords="data",
                      ha="left", va="bottom", zorder=5, **LABEL_STYLE,
                      arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if level != y else None)
    axis.set_xlim(*x_limits)
    axis.set_ylim(*y_limits)
    axis.set_xlabel(f"{label} (ROUGE x 100)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)


def _timeline_panel(axis, rows: list[dict], label: str) -> None:
    """Every score over the submissions in order, with the expected public score's band."""
    positions = np.arange(len(rows))
    other = {"test_matched": "OOF final", "oof": "test-matched final"}
    other_values = [other_score(row)[1] for row in rows]
    series = [("cv", [row["cv"] for row in rows], label, "-"),
              ("other", other_values, " / ".join(sorted({other[row["cv_by"]] for row in rows})), ":"),
              *((key, [row.get(key) for row in rows], SCORE_LABELS[key], "-") for key in ("dev", "public", "private"))]
    expected = [row.get("expected_public") for row in rows]
    if any(expected):
        middle = np.array([np.nan if e is None else e["expected"] for e in expected])
        low = np.array([np.nan if e is None else e["band"][0] for e in expected])
        high = np.array([np.nan if e is None else e["band"][1] for e in expected])
        axis.fill_between(positions, low, high, color=SCORE_COLOURS["expected"], alpha=0.15, linewidth=0,
                          label="expected public band", step="mid")
        axis.plot(positions, middle, "--", color=SCORE_COLOURS["expected"], label="expected public")
    for key, values, name, style in series:
        values = np.array([np.nan if value is None else value for value in values], dtype=float)
        if not np.isnan(values).all():
            axis.plot(positions, values, style, marker="o", markersize=4, color=SCORE_COLOURS[key], label=name)
    outliers = [(position, row["public"]) for position, row in zip(positions, rows) if row.get("lb_outlier")]
    if outliers:
        axis.scatter(*zip(*outliers), s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    axis.set_xticks(positions)
    axis.set_xticklabels([_short_id(row["id"]) for row in rows], rotation=90 if len(rows) > 30 else 0, fontsize=8)
    axis.set_xlim(-0.6, len(rows) - 0.4)
    axis.set_xlabel("submission id")
    axis.set_ylabel("final (ROUGE x 100)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)


def draw_history(rows: Sequence[dict], calibration: dict | None = None):
    """The history figure (matplotlib): CV against the leaderboard, and every score over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sort_rows(list(rows), "id")
    if not rows:
        raise SubmissionError("no submissions in the log yet: nothing to plot")
    label = cv_label(rows)
    figure, (scatter, timeline) = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    _scatter_panel(scatter, rows, calibration, label)
    scatter.set_ylabel("leaderboard final (ROUGE x 100)")
    scatter.set_title(f"{label} vs leaderboard (labels: submission id)", fontsize=11)
    _timeline_panel(timeline, rows, label)
    timeline.set_title("scores over time", fontsize=11)
    return figure


def plot_history(rows: Sequence[dict], path: str | Path, calibration: dict | None = None) -> Path:
    """A PNG of draw_history: CV (the score [cv] pick_by names) against public and private scores,
    each point labelled with its submission id, with the expected-public line and band once
    calibrated; and every score over the submissions in order, one colour per score kind."""
    import matplotlib.pyplot as plt

    figure = draw_history(rows, calibration)
    path = Path(path)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path
