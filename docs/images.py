"""Redraw the pictures in docs/img/ (shown in docs/guide.md) with the tool's own plot functions.

    .venv/bin/python docs/images.py            # all of them, into docs/img/

history-1.png, history-3.png, history-20.png: `competition history --plot` on a made-up log of 1, 3
and 20 submissions (CV like the bundled sample's sources; public = test-matched CV - 1.5 + noise,
one public score 1.5 points above the rest; private scores for the older half). similarity.png:
`competition data check --plot` on the bundled sample. The log is made up because no real
leaderboard answers here; everything after it (history_report, plot_history) is the real code.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

IMAGES = Path(__file__).resolve().parent / "img"
SOURCES = ["lead", "retrieval", "lead_t3", "retrieval_k3", "mbr_all", "hill_climb", "qlora", "qlora@tuned"]


def made_up_log(count: int, seed: int = 7) -> pd.DataFrame:
    """`count` rows of submissions/log.csv: test-matched CV 20-24, OOF CV 0-1 above it, public =
    test-matched - 1.5 + N(0, 0.25) (submission 4 of 5 or more: 1.5 higher, public-LB noise), the
    last three of 20 not scored yet, private for the first half."""
    from competition.submit.submission import LOG_COLUMNS

    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        number = f"{index + 1:04d}"
        matched = 20.0 + 4.0 * index / max(count - 1, 1) + rng.normal(0, 0.4)
        oof = matched + rng.uniform(0.0, 1.0)
        public = matched - 1.5 + rng.normal(0, 0.25) + (1.5 if index == 3 and count >= 5 else 0.0)
        private = matched - 1.3 + rng.normal(0, 0.2)
        source = SOURCES[index % len(SOURCES)]
        row = {column: "" for column in LOG_COLUMNS}
        row.update(id=number, created_at=f"2026-11-{index % 28 + 1:02d}T10:00:00+00:00", file=f"{number}-{source}.csv",
                   sha256=number * 16, source=source, oof_final=f"{oof:.4f}", oof_ci95_low=f"{oof - 0.8:.4f}",
                   oof_ci95_high=f"{oof + 0.8:.4f}", matched_final=f"{matched:.4f}",
                   matched_ci95_low=f"{matched - 0.9:.4f}", matched_ci95_high=f"{matched + 0.9:.4f}",
                   dev_final=f"{matched - 0.6 + rng.normal(0, 0.3):.4f}",
                   public=f"{public:.4f}" if count < 20 or index < count - 3 else "",
                   private=f"{private:.4f}" if index < count // 2 else "", note="made up")
        rows.append(row)
    return pd.DataFrame(rows, columns=LOG_COLUMNS)


def made_up_workspace(root: Path, count: int) -> Path:
    """A workspace folder holding only competition.toml and the made-up log."""
    (root / "submissions").mkdir(parents=True, exist_ok=True)
    (root / "competition.toml").write_text("", encoding="utf-8")
    made_up_log(count).to_csv(root / "submissions" / "log.csv", index=False)
    return root


def draw_history(count: int, path: Path) -> Path:
    """history-COUNT.png from the made-up log, through history_report as `competition history` does."""
    from competition.workspace.config import load_config
    from competition.submit.history import history_report, plot_history

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(made_up_workspace(Path(folder), count) / "competition.toml")
        report = history_report(config)
        return plot_history(report["submissions"], path, report["calibration"])


def draw_similarity(path: Path) -> Path:
    """similarity.png: `competition data check --plot` on the bundled sample."""
    from click.testing import CliRunner

    from competition.cli import main

    with tempfile.TemporaryDirectory() as folder:
        runner = CliRunner()
        workspace = Path(folder) / "ws"
        for arguments in (["init", str(workspace), "--example"],
                          ["data", "check", "--config", str(workspace / "competition.toml"), "--plot", str(path)]):
            result = runner.invoke(main, arguments, catch_exceptions=False)
            if result.exit_code != 0:
                raise SystemExit(f"competition {' '.join(arguments)} failed: {result.output}")
    return path


def main(folder: Path = IMAGES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [draw_history(count, folder / f"history-{count}.png") for count in (1, 3, 20)]
    drawn.append(draw_similarity(folder / "similarity.png"))
    return drawn


if __name__ == "__main__":
    for written in main(Path(sys.argv[1]) if len(sys.argv) > 1 else IMAGES):
        print(f"wrote {written}")
