"""Training curves as `competition cv --curves` shows them: each trained fold's train.json (written
by validation during the training) read back and drawn, the chosen step of each fold marked."""
from __future__ import annotations

from pathlib import Path

from ..data.predictions import fold_dir, read_meta, run_dir
from ..errors import CompetitionError
from ..models.params import Trainer

class NoCurves(CompetitionError):
    """A source whose folds recorded no training curve (not trained yet, or a kind that does not train)."""


def fold_curves(config, name: str) -> dict[str, dict]:
    """Each trained fold's (and the refit model's) train.json curve and chosen step, by label
    ("fold 0", ..., "refit"); NoCurves when none has one."""

    found = {}
    folds = sorted(int(path.name.split("_")[1]) for path in run_dir(config, name).glob("fold_*")
                   if path.name.split("_")[1].isdigit())
    places = [(f"fold {fold}", fold_dir(config, name, fold) / "work") for fold in folds]
    places.append(("refit", run_dir(config, name) / "refit" / "work"))
    for label, workdir in places:
        report = read_meta(workdir / "train.json")
        if isinstance(report, dict) and report.get("curve"):
            found[label] = {"curve": report["curve"], "chosen_step": report.get("chosen_step"),
                            "eval_metric": report.get("eval_metric"), "best_metric": report.get("best_metric"),
                            "global_step": report.get("global_step")}
    candidate = config.candidates.get(name)
    if not found and (name in config.ensembles or (candidate is not None and not isinstance(candidate.params, Trainer))):
        what = "an ensemble" if name in config.ensembles else f"kind {candidate.kind}"
        raise NoCurves(f"{name!r} ({what}) trains no model, so it has no training curves: --curves takes a "
                       f"candidate of a kind that trains (qlora, seq2seq)")
    if not found:
        raise NoCurves(f"no training curve under {run_dir(config, name)}: curves are recorded in each fold's "
                       f"work/train.json by the kinds that train (qlora, seq2seq): run `competition run {name}`")
    return found


def plot_curves(curves: dict[str, dict], name: str, path: Path) -> None:
    """Training loss, validation loss and validation ROUGE final against the step, one colour per
    fold, the chosen step of each fold marked; a panel is left out when no fold has its values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, label) for key, label in (("loss", "training loss"), ("eval_loss", "validation loss"),
                                              ("eval_rouge_final", "validation ROUGE final (x 100)"))
              if any(key in point for fold in curves.values() for point in fold["curve"])]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for (key, label), axis in zip(panels, axes[0]):
        for index, (fold, data) in enumerate(curves.items()):
            points = [(p["step"], p[key]) for p in data["curve"] if key in p]
            if not points:
                continue
            colour = f"C{index % 10}"
            axis.plot(*zip(*points), marker=".", color=colour, label=fold)
            chosen = [value for step, value in points if step == data.get("chosen_step")]
            if chosen:
                axis.plot([data["chosen_step"]], chosen, marker="*", markersize=14, color=colour)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0][0].legend(title="* = chosen step")
    figure.suptitle(f"{name}: training curves per fold")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
