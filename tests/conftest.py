"""Shared fixtures: tiny Korean workspaces built in code, and the real data beside the project."""
from __future__ import annotations

import os
from pathlib import Path

# Under `make test`'s workers (one per core, pytest-xdist) one thread per process for torch, numpy
# and their subprocesses, so the workers do not fight for cores; a run in one process keeps them all.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pandas as pd
import pytest
from click.testing import CliRunner

from competition.data.folds import build_folds
from competition.data.loading import load_from_config
from competition.text.metric import RougeScorer
from competition.workspace.config import load_config
from korean_fixture import DIALOGUES

# The tiny models' session fixtures (tiny_causal_lm, tiny_t5, ...), registered once for the whole
# session: imported into each test module instead, every module would build its own copy.
pytest_plugins = ["tiny_models"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def in_ci() -> bool:
    """True where the environment variable CI is set to a true value (CI=true or CI=1)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_shared_data() -> Path:
    """../shared/data, or: a failure in CI (the data is always there, so its absence is a broken
    set-up, not a reason to skip), a skip with the reason elsewhere."""
    if not SHARED_DATA.is_dir():
        if in_ci():
            pytest.fail(f"real data folder {SHARED_DATA} is absent but CI={os.environ['CI']}: CI must provide "
                        f"../shared/data (the real-data tests would otherwise skip silently)", pytrace=False)
        pytest.skip(f"real data folder {SHARED_DATA} is absent (outside CI real-data tests are skipped)")
    return SHARED_DATA


# `make test` runs one pytest-xdist worker per core. A worker takes a file's tests whole, so a module
# fixture (a trained model, a Ray cluster) is built once, with two exceptions: the Ray files share one
# worker (one cluster at a time), and each walk is a unit of its own. The longest units start first,
# so no worker is left with a minute of work at the end.
SAME_WORKER = {"tests/run/test_executors.py": "ray", "tests/run/test_ray_cluster.py": "ray"}
EACH_TEST_APART = ("tests/test_walk.py",)
LONGEST_FIRST = ("tests/test_walk.py", "tests/run/test_executors.py", "tests/run/test_ray_cluster.py",
                 "tests/models/test_launch.py", "tests/stages/test_tune.py", "tests/data/test_folds.py",
                 "tests/test_bench.py")


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(items):
    """LONGEST_FIRST's files first, in that order; the rest as collected."""
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(file_of(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Units of work by file (see SAME_WORKER and EACH_TEST_APART), handed out in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = file_of(nodeid)
            return nodeid if path in EACH_TEST_APART else SAME_WORKER.get(path, path)

    config.option.loadscopereorder = False
    return ByFile(config, log)


@pytest.fixture(autouse=True)
def notes_not_yet_said():
    """Each test starts as a new command would: nothing said once per process (say_once) yet."""
    from competition import progress

    progress._said.clear()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (the real Korean dev/test and English DialogSum); see require_shared_data."""
    return require_shared_data()


@pytest.fixture
def korean_rows() -> pd.DataFrame:
    return pd.DataFrame(DIALOGUES, columns=["fname", "dialogue", "summary", "topic"])


def write_workspace(root: Path, train: pd.DataFrame, test: pd.DataFrame, dev: pd.DataFrame | None = None,
                    config: str = "") -> Path:
    """A workspace folder: data/{train,dev,test,sample_submission}.csv and competition.toml."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    train.to_csv(data / "train.csv", index=False)
    test[["fname", "dialogue"]].to_csv(data / "test.csv", index=False)
    pd.DataFrame({"fname": test["fname"], "summary": ""}).to_csv(data / "sample_submission.csv", index=False)
    if dev is not None:
        dev.to_csv(data / "dev.csv", index=False)
    else:
        config = '[data]\ndev = ""\n' + config
    (root / "competition.toml").write_text(config, encoding="utf-8")
    return root


def first_turns(frame: pd.DataFrame) -> list[str]:
    """Each dialogue's first turn: the predictions of the metric and `competition score` tests."""
    return [dialogue.split("\n")[0] for dialogue in frame["dialogue"]]


LEAD_AND_RETRIEVAL = """
[cv]
k = 3
bootstrap = 100

[candidates.lead]
kind = "lead"
max_turns = 4

[candidates.retrieval]
kind = "retrieval"
"""


def real_dev_workspace(root: Path, shared_data: Path) -> Path:
    """90 real Korean dev rows as train, 30 more as a dev hold-out, 20 real test rows; the lead and
    retrieval candidates of LEAD_AND_RETRIEVAL, k = 3 folds built (the runner and fold-run tests)."""
    rows = pd.read_csv(shared_data / "dialogsum-ko" / "dev.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(shared_data / "dialogsum-ko" / "test.csv", dtype=str, keep_default_na=False).head(20)
    root = write_workspace(root, rows.head(90), test, rows.iloc[90:120], LEAD_AND_RETRIEVAL)
    config = load_config(root / "competition.toml")
    build_folds(config, load_from_config(config).train)
    return root


@pytest.fixture
def korean_workspace(tmp_path, korean_rows) -> Path:
    """Train = the 12 fixture dialogues; dev = 4 of them renamed; test = 4 renamed."""
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    return write_workspace(tmp_path, korean_rows, test, dev)


@pytest.fixture
def words_scorer() -> RougeScorer:
    """Official ROUGE on whitespace tokens, for the hand-made MBR and ensemble cases."""
    return RougeScorer("whitespace", "official", "mean")


@pytest.fixture(scope="session")
def cli():
    """Invoke the `competition` CLI in-process: cli(args, cwd) -> click Result (stateless, so
    module-scoped fixtures may use it too)."""
    from competition.cli import main

    def invoke(args, cwd: Path | None = None):
        runner = CliRunner()
        if cwd is None:
            return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        import os

        old = os.getcwd()
        os.chdir(cwd)
        try:
            return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        finally:
            os.chdir(old)

    return invoke
