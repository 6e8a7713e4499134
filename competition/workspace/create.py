"""A workspace (competition.toml, data/, folds/, runs/, submissions/) and the bundled sample that
lets a fresh clone run the whole flow before the competition files are in place."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import PACKAGE_DIR
from ..data.loading import SAMPLE_DIR
from ..errors import ConfigError
from .config import load_config

TEMPLATE = PACKAGE_DIR / "templates" / "competition.toml"  # the documented defaults, as in the repository
SAMPLE_FILES = ("train.csv", "dev.csv", "test.csv", "sample_submission.csv", "README.md", "LICENSE")
GITIGNORE = "data/\nruns/\n.venv/\n__pycache__/\nsubmissions/.log.lock\n.*.tmp\n.*.pending\nmlruns.db\nmlartifacts/\n"
DATA_README = """# Competition files go here

Put the four files of the competition here (download them from the competition page after joining it):
- train.csv: fname,dialogue,summary,topic (12,457 rows)
- dev.csv: the same columns (499 rows); or set dev = "" in competition.toml when there is none
- test.csv: fname,dialogue (499 rows)
- sample_submission.csv: fname,summary in leaderboard order

Then `competition data check` validates them and `competition pipeline` (or `make submit`) runs the
whole flow. This folder is not tracked by git: the data's licence (CC BY-NC-SA 4.0) is not the code's.
"""


def init_workspace(folder: str | Path, example: bool = False, force: bool = False,
                   template: str | Path | None = None) -> dict:
    """Write a fresh workspace into `folder`: competition.toml (the documented defaults, or
    `template`, which must load), folds/, submissions/, data/README.md (where the files come from),
    a .gitignore; with `example` the bundled sample's files in data/. Refuses to overwrite an
    existing competition.toml unless `force`."""

    folder = Path(folder)
    config_path = folder / "competition.toml"
    if template is not None:
        load_config(template)  # refuses a missing or invalid file before anything is written
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} already exists: pass --force to overwrite it, or choose another folder")
    for sub in ("data", "folds", "submissions"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template or TEMPLATE, config_path)
    written = [config_path]
    for path, text in ((folder / "data" / "README.md", DATA_README), (folder / ".gitignore", GITIGNORE)):
        if force or not path.exists():
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if example:
        for name in SAMPLE_FILES:
            target = folder / "data" / (name if name.endswith(".csv") else f"SAMPLE-{name}")
            shutil.copyfile(SAMPLE_DIR / name, target)
            written.append(target)
    return {"folder": str(folder.resolve()), "written": [str(path) for path in written], "example": example}
