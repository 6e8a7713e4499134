"""The leaderboard platform: upload, wait and sync against a fake Kaggle that behaves like the real
one (pending -> complete, error status, the daily limit, private scores published later, submissions
made elsewhere), every refusal as one line, retries without real waiting, hand scores kept, two syncs
at once, and the manual backend that never imports `kaggle`. Plus the implausible-score rule of
`lb record`."""
from __future__ import annotations

import enum
import hashlib
import json
import multiprocessing
import subprocess
import sys
import textwrap
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import requests

from competition.errors import ConfigError, LeaderboardError, SubmissionError
from competition.submit import leaderboard
from competition.submit.leaderboard import (KagglePlatform, PlatformSubmission, PlatformUnreachable, describe,
                                            match_submissions, parse_description, sync, upload, wait_for_score)
from competition.submit.submission import LOG_COLUMNS, read_lb_history, read_log, record_scores
from competition.workspace.config import load_config

SLUG = "dialogue-summ"
KAGGLE_TOML = f'[leaderboard]\nbackend = "kaggle"\ncompetition = "{SLUG}"\n'
# id, source, CV (OOF final)
LOGGED = [("0001", "lead", 40.10), ("0002", "retrieval", 42.25), ("0003", "mbr", 44.00)]


# --- a fake Kaggle with the official client's shapes (kaggle 2.2.5 / kagglesdk) ---------------------

class Status(enum.Enum):  # kagglesdk.competitions.types.submission_status.SubmissionStatus
    PENDING = 0
    COMPLETE = 1
    ERROR = 2


class ApiSubmission:
    def __init__(self, ref, description, file_name, date):
        self.ref, self.description, self.file_name, self.date = ref, description, file_name, date
        self.status, self.public_score, self.private_score, self.error_description = Status.PENDING, "", "", ""
        self.total_bytes = 0


def http_error(status: int, message: str) -> requests.HTTPError:
    """What kagglesdk raises: the platform's JSON message as the text, the response attached."""
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(message, response=response)


DAILY = ("Submission not allowed: Your team has used its daily Submission allowance (5) today, please try "
         "again tomorrow UTC (7.5 hours from now).")


class FakeKaggle:
    """KaggleApi's competition_submit and competition_submissions over an in-memory team."""

    def __init__(self, daily_allowance: int = 5):
        self.items: list[ApiSubmission] = []
        self.daily_left = daily_allowance
        self.failures: list[BaseException] = []  # raised by the next calls, one each
        self.on_list = None  # called before each listing (the platform scoring in the background)
        self.uploads = 0
        self.config_values = {"username": "me", "key": "secret"}
        self.clock = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

    def _fail_maybe(self):
        if self.failures:
            raise self.failures.pop(0)

    def competition_submit(self, file_name, message, competition, quiet=False):
        assert competition == SLUG
        self._fail_maybe()
        if self.daily_left <= 0:
            raise http_error(400, DAILY)
        header = Path(file_name).read_bytes().split(b"\n", 1)[0]
        if header != b"fname,summary":
            raise http_error(400, "Submission file must have the columns fname,summary")
        self.daily_left -= 1
        self.uploads += 1
        return self.add(message, Path(file_name).name).ref_response()

    def add(self, description, file_name="submission.csv"):
        self.clock += timedelta(minutes=1)
        item = ApiSubmission(50000 + len(self.items), description, file_name, self.clock)
        item.ref_response = lambda: types.SimpleNamespace(ref=item.ref, message="Successfully submitted")
        self.items.append(item)
        return item

    def competition_submissions(self, competition, page_number=-1, page_size=20, **_):
        assert competition == SLUG
        self._fail_maybe()
        if self.on_list and page_number == 1:  # once per listing
            self.on_list(self)
        newest_first = sorted(self.items, key=lambda item: item.date, reverse=True)
        start = (page_number - 1) * page_size
        return newest_first[start:start + page_size]

    def find(self, description_start: str) -> ApiSubmission:
        return next(item for item in self.items if item.description.startswith(description_start))

    @staticmethod
    def score(item: ApiSubmission, public: str, private: str = ""):
        item.status, item.public_score, item.private_score = Status.COMPLETE, public, private


@pytest.fixture
def kaggle(monkeypatch):
    """The fake behind the seam, and instant pauses (recorded) on a fake clock."""
    fake = FakeKaggle()
    fake.pauses = []
    now = [0.0]

    def pause(seconds):
        fake.pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(leaderboard, "kaggle_api", lambda: fake)
    monkeypatch.setattr(leaderboard, "pause", pause)
    monkeypatch.setattr(leaderboard, "monotonic", lambda: now[0])
    return fake


def write_log(root: Path, toml: str = KAGGLE_TOML, rows=LOGGED) -> Path:
    """A workspace whose log holds `rows`, each with its file on disk (sha256 as logged)."""
    (root / "competition.toml").write_text(toml, encoding="utf-8")
    folder = root / "submissions"
    folder.mkdir(exist_ok=True)
    records = []
    for number, source, cv in rows:
        content = f"fname,summary\ntest_0,{source} 요약 {number}\n".encode()
        name = f"{number}-{source}.csv"
        (folder / name).write_bytes(content)
        record = {column: "" for column in LOG_COLUMNS}
        record.update(id=number, created_at=f"2026-11-{int(number):02d}T10:00:00+00:00", file=name, source=source,
                      sha256=hashlib.sha256(content).hexdigest(), oof_final=f"{cv:.4f}", note=f"try {source}")
        records.append(record)
    pd.DataFrame(records, columns=LOG_COLUMNS).to_csv(folder / "log.csv", index=False)
    return root


@pytest.fixture
def workspace(tmp_path):
    return write_log(tmp_path)


def config_of(root: Path):
    return load_config(root / "competition.toml")


def row_of(root: Path, submission_id: str) -> dict:
    log = read_log(config_of(root))
    return log[log["id"] == submission_id].iloc[0].to_dict()


def one_line_error(result, *needles, after: int = 0):
    """Exit 2 and one error line holding every needle (after `after` lines of progress)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == after + 1 and lines[-1].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


# --- upload and wait --------------------------------------------------------------------------------

def test_upload_wait_goes_from_pending_to_complete_and_logs_the_public_score(workspace, kaggle, cli):
    polls = []

    def scoring(fake):  # pending on the first two polls, scored on the third
        polls.append(1)
        if len(polls) == 3:
            fake.score(fake.find("#0002"), "42.8153")

    kaggle.on_list = scoring
    result = cli(["lb", "upload", "2", "--wait"], cwd=workspace)
    assert result.exit_code == 0, result.output
    item = kaggle.find("#0002")
    assert item.description == "#0002 retrieval cv=42.25 try retrieval"
    assert item.file_name == "0002-retrieval.csv"
    row = row_of(workspace, "0002")
    assert row["lb_ref"] == str(item.ref) and row["uploaded_at"].endswith("+00:00")
    assert row["public"] == "42.8153" and row["private"] == ""
    assert f"reference {item.ref}" in result.output and "recorded  0002  public 42.8153 (was -)" in result.output
    assert kaggle.pauses == [10.0, 20.0]  # [leaderboard] poll_s, doubled; no real time passed
    history = read_lb_history(config_of(workspace))
    assert history[["id", "public", "by"]].values.tolist() == [["0002", "42.8153", "sync"]]
    # A second upload of the same submission is refused (the allowance is precious) unless --force.
    again = cli(["lb", "upload", "2"], cwd=workspace)
    one_line_error(again, "already uploaded", f"reference {item.ref}", "--force")
    assert kaggle.uploads == 1


def test_wait_is_bounded_and_leaves_the_rest_to_sync(workspace, kaggle, cli):
    (workspace / "competition.toml").write_text(KAGGLE_TOML + "wait_s = 100.0\npoll_s = 10.0\npoll_max_s = 30.0\n")
    result = cli(["lb", "upload", "1", "--wait"], cwd=workspace)
    assert result.exit_code == 0, result.output
    assert "Still pending after" in result.output and "lb sync" in result.output
    assert kaggle.pauses == [10.0, 20.0, 30.0, 30.0]  # 90 s: one more pause would pass wait_s = 100
    assert row_of(workspace, "0001")["lb_ref"] and row_of(workspace, "0001")["public"] == ""


def test_ctrl_c_while_waiting_keeps_the_upload_in_the_log(workspace, kaggle, cli, monkeypatch):
    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(leaderboard, "pause", interrupted)
    result = cli(["lb", "upload", "1", "--wait"], cwd=workspace)
    assert result.exit_code == 130
    assert "Stopped waiting" in result.output and "lb sync" in result.output
    assert row_of(workspace, "0001")["lb_ref"] == str(kaggle.find("#0001").ref)


def test_submit_upload_wait_writes_uploads_and_scores_in_one_command(tmp_path, korean_rows, kaggle, cli):
    from conftest import write_workspace
    from submit.test_submission import TEST_SUMMARIES, add_source

    test = korean_rows.tail(len(TEST_SUMMARIES)).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, None, config=(
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n'
        '[candidates.lead]\nkind = "lead"\n\n' + KAGGLE_TOML))
    add_source(root, "lead", TEST_SUMMARIES, oof_suffix=" 그리고 끝")
    cv = None  # the toy source's CV, read once it is logged: a public score near it is plausible

    def near_cv(fake):
        nonlocal cv
        cv = cv or float(row_of(root, "0001")["oof_final"])
        fake.score(fake.items[-1], f"{cv - 1.5:.4f}")

    kaggle.on_list = near_cv
    result = cli(["submit", "lead", "--upload", "--wait", "--note", "first try"], cwd=root)
    assert result.exit_code == 0, result.output
    row = row_of(root, "0001")
    item = kaggle.items[0]
    assert item.description == f"#0001 lead cv={cv:.2f} first try" and item.file_name == "0001-lead.csv"
    assert row["lb_ref"] == str(item.ref) and float(row["public"]) == pytest.approx(cv - 1.5, abs=1e-4)
    assert Path(root / "submissions" / "0001-lead.csv").exists()

    # The daily limit after the file is written: logged, not uploaded, and the message says what to do.
    kaggle.daily_left = 0
    add_source(root, "lead", TEST_SUMMARIES[::-1], oof_suffix=" 그리고 끝")
    result = cli(["submit", "lead", "--upload"], cwd=root)
    one_line_error(result, "submission 0002 (0002-lead.csv) is logged but not uploaded", "daily submission limit",
                   "7.5 h", "lb upload")
    assert row_of(root, "0002")["lb_ref"] == ""


# --- refusals ---------------------------------------------------------------------------------------

def test_daily_limit_says_when_it_resets_and_changes_nothing(workspace, kaggle, cli):
    kaggle.daily_left = 0
    before = (workspace / "submissions" / "log.csv").read_bytes()
    result = cli(["lb", "upload", "1"], cwd=workspace)
    one_line_error(result, "daily submission limit", "(5) today", "resets in 7.5 h, about", "UTC",
                   "competition lb upload ID")
    assert (workspace / "submissions" / "log.csv").read_bytes() == before
    assert kaggle.pauses == []  # a refusal is not retried


@pytest.mark.parametrize("status, message, needles", [
    (404, "NotFound", [f"no Kaggle competition '{SLUG}'", "[leaderboard]", "kaggle.com/competitions/SLUG"]),
    (403, "Permission 'competitions.submit' was denied", ["403", f"competitions/{SLUG}/rules", "accept its rules"]),
    (400, "You must accept this competition's rules before you'll be able to submit", ["accept its rules"]),
    (401, "Unauthenticated", ["credentials (401", "KAGGLE_USERNAME"]),
    (400, "Submission file has 3 rows, expected 499", ["Kaggle rejected 0001-lead.csv", "has 3 rows, expected 499",
                                                       "fix the file"]),
])
def test_every_refusal_is_one_line_with_its_fix(workspace, kaggle, cli, status, message, needles):
    kaggle.failures = [http_error(status, message)]
    one_line_error(cli(["lb", "upload", "1"], cwd=workspace), *needles)
    assert row_of(workspace, "0001")["lb_ref"] == "" and kaggle.pauses == []


def test_file_changed_since_logged_is_not_uploaded(workspace, kaggle, cli):
    (workspace / "submissions" / "0001-lead.csv").write_text("fname,summary\ntest_0,edited\n")
    one_line_error(cli(["lb", "upload", "1"], cwd=workspace), "changed since it was logged")
    assert kaggle.uploads == 0


def test_network_errors_are_retried_with_backoff_then_stop(workspace, kaggle, cli):
    kaggle.failures = [requests.ConnectionError("Name or service not known"), requests.Timeout("read timed out")]
    result = cli(["lb", "sync"], cwd=workspace)
    assert result.exit_code == 0, result.output
    assert kaggle.pauses == [2.0, 4.0]

    kaggle.pauses.clear()
    kaggle.failures = [requests.ConnectionError("Network is unreachable")] * 3 + [http_error(503, "Unavailable")]
    one_line_error(cli(["lb", "sync"], cwd=workspace), "did not answer the submission list after 4 tries",
                   "HTTPError: Unavailable", "check the network", "run the same command again")
    assert kaggle.pauses == [2.0, 4.0, 8.0]


def test_an_upload_that_timed_out_but_arrived_is_not_uploaded_twice(workspace, kaggle):
    original = kaggle.competition_submit

    def arrives_then_times_out(*args, **kwargs):
        original(*args, **kwargs)
        raise requests.ReadTimeout("read timed out")

    kaggle.competition_submit = arrives_then_times_out
    row = upload(config_of(workspace), "3", KagglePlatform(config_of(workspace).leaderboard, kaggle))
    assert kaggle.uploads == 1 and row["lb_ref"] == str(kaggle.items[0].ref)


def test_missing_package_credentials_and_manual_backend(workspace, cli, monkeypatch):
    class Blocker:  # `kaggle` is not installed (here it may or may not be: block it)
        def find_spec(self, name, path=None, target=None):
            if name == "kaggle" or name.startswith("kaggle."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Blocker(), *sys.meta_path])
    one_line_error(cli(["lb", "sync"], cwd=workspace), "needs the official kaggle package",
                   "pip install 'competition[kaggle]'", 'backend = "manual"')
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[1:])

    # Installed without credentials: kaggle >= 2.2 imports with an empty config, older ones exit(1).
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=types.SimpleNamespace(config_values={})))
    one_line_error(cli(["lb", "upload", "1"], cwd=workspace), "no Kaggle credentials", "KAGGLE_USERNAME",
                   "~/.kaggle/kaggle.json")
    assert row_of(workspace, "0001")["lb_ref"] == ""

    (workspace / "competition.toml").write_text("")
    one_line_error(cli(["lb", "sync"], cwd=workspace), 'backend is "manual"', "lb record", 'backend = "kaggle"')


def test_leaderboard_config_problems_are_reported_at_once(tmp_path, cli):
    (tmp_path / "competition.toml").write_text(
        '[leaderboard]\nbackend = "kagle"\ncompetition = "https://www.kaggle.com/competitions/Dialogue-Summ"\n'
        'poll_s = 90.0\ntries = 0\n')
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "competition.toml")
    text = str(error.value)
    for needle in ("backend = 'kagle': choose manual or kaggle", "give the slug alone", "'dialogue-summ'",
                   "poll_max_s = 60.0 is below poll_s = 90.0", "tries = 0"):
        assert needle in text
    (tmp_path / "competition.toml").write_text('[leaderboard]\nbackend = "kaggle"\n')
    with pytest.raises(ConfigError, match='needs competition = "SLUG"'):
        load_config(tmp_path / "competition.toml")


# --- sync -------------------------------------------------------------------------------------------

def test_sync_records_public_then_private_published_later_and_twice_changes_nothing(workspace, kaggle, cli):
    config = config_of(workspace)
    platform = KagglePlatform(config.leaderboard, kaggle)
    for key in ("1", "2", "3"):
        upload(config, key, platform)
    first, second, third = kaggle.items
    kaggle.score(first, "40.9000")
    kaggle.score(second, "43.0000")
    third.status, third.error_description = Status.ERROR, "Submission  file has 3 rows,\nexpected 499"

    report = sync(config, platform)
    assert [(entry["id"], entry["column"], entry["platform"]) for entry in report["recorded"]] == [
        ("0001", "public", "40.9000"), ("0002", "public", "43.0000")]
    assert report["failed"] == [{"id": "0003", "ref": str(third.ref), "description": third.description,
                                 "error": "Submission file has 3 rows, expected 499"}]
    assert report["linked"] == [] and report["unmatched"] == [] and report["listed"] == 3

    files = [workspace / "submissions" / name for name in ("log.csv", "lb_history.csv")]
    before = [path.read_bytes() for path in files]
    again = cli(["lb", "sync"], cwd=workspace)
    assert again.exit_code == 0, again.output
    assert "0 recorded, 0 linked" in again.output and "The log is up to date." in again.output
    assert "failed    0003" in again.output and "has 3 rows, expected 499" in again.output
    assert [path.read_bytes() for path in files] == before

    # After the deadline the private scores appear all at once.
    kaggle.score(first, "40.9000", "41.2000")
    kaggle.score(second, "43.0000", "42.1000")
    report = sync(config, platform)
    assert [(entry["id"], entry["column"], entry["platform"]) for entry in report["recorded"]] == [
        ("0001", "private", "41.2000"), ("0002", "private", "42.1000")]
    log = read_log(config).set_index("id")
    assert log.loc["0001", ["public", "private"]].tolist() == ["40.9000", "41.2000"]
    assert sync(config, platform)["recorded"] == []

    # `history` shows CV against public and private for every matched submission.
    result = cli(["history", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)["submissions"]}
    assert rows["0001"]["cv"] == 40.1 and rows["0001"]["public"] == 40.9 and rows["0001"]["private"] == 41.2
    assert rows["0001"]["public_minus_cv"] == pytest.approx(0.8) and rows["0002"]["private_minus_cv"] == pytest.approx(
        42.1 - 42.25)
    assert rows["0003"]["public"] is None


def test_sync_matches_by_description_and_reports_outside_submissions(workspace, kaggle, cli):
    # Uploaded by hand with `kaggle competitions submit -m "#0002 retrieval ..."`: matched by its description.
    kaggle.score(kaggle.add("#0002 retrieval cv=42.25 from the kaggle CLI", "0002-retrieval.csv"), "42.5000")
    kaggle.score(kaggle.add("quick test from a notebook", "submission.csv"), "12.0000")
    kaggle.add("#0009 lead another workspace's")
    kaggle.score(kaggle.add("#0001 retrieval wrong source"), "40.0000")
    result = cli(["lb", "sync", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["linked"] == [{"id": "0002", "ref": str(kaggle.items[0].ref), "by": "description"}]
    assert [entry["id"] for entry in report["recorded"]] == ["0002"]
    reasons = {entry["description"]: entry["reason"] for entry in report["unmatched"]}
    assert reasons["quick test from a notebook"].startswith("made outside this toolkit")
    assert "no log row 0009 with source 'lead'" in reasons["#0009 lead another workspace's"]
    assert "no log row 0001 with source 'retrieval'" in reasons["#0001 retrieval wrong source"]
    row = row_of(workspace, "0002")
    assert row["lb_ref"] == str(kaggle.items[0].ref) and row["uploaded_at"] == "2026-12-01T09:01:00+00:00"
    assert row_of(workspace, "0001")["public"] == ""  # the unmatched score went nowhere
    text = cli(["lb", "sync"], cwd=workspace).output
    assert "unmatched reference" in text and "'quick test from a notebook'" in text


def test_matching_order_reference_then_description_then_sha256():
    log = pd.DataFrame([{**{column: "" for column in LOG_COLUMNS}, "id": number, "source": source, "sha256": digest,
                         "lb_ref": ref} for number, source, digest, ref in [
        ("0001", "lead", "aaa", "77"), ("0002", "mbr", "bbb", ""), ("0003", "mbr", "ccc", "")]])
    listed = [PlatformSubmission("77", "#0003 mbr", submitted_at="1"),  # the reference wins over the description
              PlatformSubmission("78", "notebook", sha256="ccc", submitted_at="2"),
              PlatformSubmission("79", "#0002 mbr cv=1", submitted_at="3"),
              PlatformSubmission("80", "#0002 mbr cv=1", submitted_at="4")]  # uploaded twice: the first wins
    matched, unmatched = match_submissions(log, listed)
    assert [(position, item.ref, how) for position, item, how in matched] == [
        (0, "77", "ref"), (2, "78", "sha256"), (1, "79", "description")]
    assert [entry["ref"] for entry in unmatched] == ["80"] and "already holds" in unmatched[0]["reason"]
    assert parse_description(describe({"id": "0012", "source": "qwen#s13", "oof_final": "19.8412", "note": ""})) == (
        12, "qwen#s13")
    assert describe({"id": "0012", "source": "qwen#s13", "oof_final": "19.8412", "note": ""}) == "#0012 qwen#s13 cv=19.84"


def test_hand_scores_are_kept_unless_force(workspace, kaggle, cli):
    config = config_of(workspace)
    platform = KagglePlatform(config.leaderboard, kaggle)
    upload(config, "1", platform)
    record_scores(config, "1", public=40.0)  # typed by hand from the site
    kaggle.score(kaggle.items[0], "40.5000")
    result = cli(["lb", "sync"], cwd=workspace)
    assert result.exit_code == 0, result.output
    assert "kept      0001  public 40.0000 typed by hand; the platform says 40.5000: pass --force" in result.output
    assert row_of(workspace, "0001")["public"] == "40.0000"
    result = cli(["lb", "sync", "--force"], cwd=workspace)
    assert "recorded  0001  public 40.5000 (was 40.0000)" in result.output
    assert row_of(workspace, "0001")["public"] == "40.5000"
    history = read_lb_history(config)
    assert history[["public", "previous_public", "by"]].values.tolist() == [["40.0000", "", "hand"],
                                                                            ["40.5000", "40.0000", "sync"]]
    # From now on the score is the platform's: a rescore follows without --force.
    kaggle.score(kaggle.items[0], "40.6000")
    assert [entry["platform"] for entry in sync(config, platform)["recorded"]] == ["40.6000"]


def test_sync_refuses_scores_on_another_scale_until_told(workspace, kaggle, cli):
    config = config_of(workspace)
    upload(config, "1", KagglePlatform(config.leaderboard, kaggle))
    kaggle.score(kaggle.items[0], "0.4123")
    result = cli(["lb", "sync"], cwd=workspace)
    assert "refused   0001  public 0.4123 for submission 0001 looks like the 0-1 scale" in result.output
    assert "score_scale = 100" in result.output and row_of(workspace, "0001")["public"] == ""
    (workspace / "competition.toml").write_text(KAGGLE_TOML + "score_scale = 100.0\n")
    assert cli(["lb", "sync"], cwd=workspace).exit_code == 0
    assert row_of(workspace, "0001")["public"] == "41.2300"


def test_an_old_log_and_history_read_and_sync(workspace, kaggle):
    folder = workspace / "submissions"
    log = pd.read_csv(folder / "log.csv", dtype=str, keep_default_na=False)
    log.drop(columns=["lb_ref", "uploaded_at"]).assign(public=["39.0000", "", ""]).to_csv(folder / "log.csv",
                                                                                           index=False)
    pd.DataFrame([["2026-11-02T10:00:00+00:00", "0001", "39.0000", "", "", ""]],
                 columns=["recorded_at", "id", "public", "private", "previous_public", "previous_private"]).to_csv(
        folder / "lb_history.csv", index=False)
    config = config_of(workspace)
    assert read_log(config)["lb_ref"].tolist() == ["", "", ""] and read_lb_history(config)["by"].tolist() == [""]
    kaggle.score(kaggle.add("#0001 lead cv=40.10"), "39.5000")
    kaggle.score(kaggle.add("#0002 retrieval cv=42.25"), "42.0000")
    report = sync(config, KagglePlatform(config.leaderboard, kaggle))
    assert [entry["id"] for entry in report["kept"]] == ["0001"]  # an old recording counts as typed by hand
    assert [entry["id"] for entry in report["recorded"]] == ["0002"]
    header = (folder / "log.csv").read_text().splitlines()[0].split(",")
    assert header == LOG_COLUMNS


def _sync_in_process(root: str, barrier, job: str) -> None:
    import os

    os.chdir(root)
    config = load_config("competition.toml")
    barrier.wait()
    if job == "hand":
        record_scores(config, "3", public=44.5)
    else:
        sync(config, KagglePlatform(config.leaderboard, FAKE_FOR_CHILDREN))


FAKE_FOR_CHILDREN = None


def test_two_syncs_at_once_lose_nothing(workspace):
    global FAKE_FOR_CHILDREN
    fake = FakeKaggle()
    for number, source, public in (("0001", "lead", "40.5000"), ("0002", "retrieval", "43.0000")):
        fake.score(fake.add(f"#{number} {source} cv=1"), public, "")
    FAKE_FOR_CHILDREN = fake
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_sync_in_process, args=(str(workspace), barrier, job))
                 for job in ("sync", "sync", "hand")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    log = read_log(config_of(workspace)).set_index("id")
    assert log["public"].tolist() == ["40.5000", "43.0000", "44.5000"]
    assert log.loc["0001", "lb_ref"] and log.loc["0002", "lb_ref"]
    history = read_lb_history(config_of(workspace))
    # Each score recorded once: the second sync found the first one's work and changed nothing.
    assert sorted(history[["id", "by"]].values.tolist()) == [["0001", "sync"], ["0002", "sync"], ["0003", "hand"]]


# --- the manual backend -----------------------------------------------------------------------------

def test_manual_backend_never_imports_kaggle(tmp_path):
    root = write_log(tmp_path, toml="")
    script = textwrap.dedent(f"""
        import os, sys
        tried = []

        class Watch:
            def find_spec(self, name, path=None, target=None):
                if name == "kaggle" or name.startswith("kaggle."):
                    tried.append(name)
                return None

        sys.meta_path.insert(0, Watch())
        from click.testing import CliRunner
        from competition.cli import main

        os.chdir({str(root)!r})
        runner = CliRunner()
        codes = [runner.invoke(main, args).exit_code for args in (
            ["lb", "record", "1", "--public", "40.5"], ["history", "--json"], ["lb", "sync"],
            ["lb", "upload", "1"], ["submit", "--help"], ["lb", "--help"])]
        print(codes, tried, "kaggle" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 2, 2, 0, 0] [] False"


# --- a score on the wrong scale ---------------------------------------------------------------------

def test_record_refuses_a_score_on_the_0_1_scale_or_far_from_cv_unless_force(workspace, cli):
    config = config_of(workspace)
    with pytest.raises(SubmissionError, match=r"public 0\.407 for submission 0003 looks like the 0-1 scale .* "
                                              r"give it x100 \(40\.7000\)"):
        record_scores(config, "3", public=0.407)
    with pytest.raises(SubmissionError, match=r"private 72\.0000 is 28\.00 points from submission 0003's CV 44\.0000"):
        record_scores(config, "3", private=72.0)
    assert read_log(config)["public"].tolist() == ["", "", ""] and len(read_lb_history(config)) == 0
    result = cli(["lb", "record", "3", "--public", "0.407"], cwd=workspace)
    one_line_error(result, "looks like the 0-1 scale", "pass --force if the score is right", "below 1 while CVs")
    assert "below 1 while CVs are 1 or more" in cli(["lb", "record", "--help"], cwd=workspace).output
    assert cli(["lb", "record", "3", "--public", "0.407", "--force"], cwd=workspace).exit_code == 0
    assert row_of(workspace, "0003")["public"] == "0.4070"
    assert record_scores(config, "3", public=44.2)["public"] == "44.2000"  # a real gap passes


def test_a_row_without_cv_is_judged_by_the_log_scale(tmp_path):
    root = write_log(tmp_path, toml="", rows=[("0001", "lead", 40.0), ("0002", "mbr", 41.0)])
    log_path = root / "submissions" / "log.csv"
    log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
    log.loc[1, "oof_final"] = ""
    log.to_csv(log_path, index=False)
    with pytest.raises(SubmissionError, match="0-1 scale"):
        record_scores(config_of(root), "2", public=0.41)
    assert record_scores(config_of(root), "2", public=80.0)["public"] == "80.0000"  # no CV, no gap to judge


def test_wait_reports_an_error_status_with_the_platform_text(workspace, kaggle, cli):
    def fails(fake):
        item = fake.items[-1]
        item.status, item.error_description = Status.ERROR, "Evaluation Exception: Submission must have 499 rows"

    kaggle.on_list = fails
    one_line_error(cli(["lb", "upload", "2", "--wait"], cwd=workspace), "could not score submission 0002",
                   "Submission must have 499 rows", "fix the file", after=1)  # after "Uploaded ..."
    assert row_of(workspace, "0002")["lb_ref"] and row_of(workspace, "0002")["public"] == ""


def test_library_wait_with_injected_sleep(workspace, kaggle):
    config = config_of(workspace)
    platform = KagglePlatform(config.leaderboard, kaggle)
    upload(config, "1", platform)
    slept = []
    kaggle.on_list = lambda fake: fake.score(fake.items[0], "40.2000") if slept else None
    result = wait_for_score(config, "1", platform, sleep=slept.append, clock=lambda: float(sum(slept)))
    assert result["status"] == "complete" and result["row"]["public"] == "40.2000" and slept == [10.0]
    with pytest.raises(SubmissionError, match="has not been uploaded"):
        wait_for_score(config, "2", platform, sleep=slept.append)


def test_unreachable_error_type(workspace, kaggle):
    config = config_of(workspace)
    kaggle.failures = [requests.ConnectionError("down")] * 4
    with pytest.raises(PlatformUnreachable):
        KagglePlatform(config.leaderboard, kaggle, sleep=lambda s: None).submissions()
    assert issubclass(PlatformUnreachable, LeaderboardError)


def test_sync_reads_every_page_of_the_list(workspace, kaggle):
    for number in range(44):
        kaggle.add(f"notebook try {number}")
    oldest = kaggle.items[0]
    kaggle.score(kaggle.add("#0001 lead cv=40.10"), "40.3000")
    kaggle.items.insert(0, kaggle.items.pop())  # our upload is the oldest: on the last page
    kaggle.items[0].date, oldest.date = oldest.date, kaggle.items[0].date
    report = sync(config_of(workspace), KagglePlatform(config_of(workspace).leaderboard, kaggle))
    assert report["listed"] == 45 and len(report["unmatched"]) == 44
    assert [entry["id"] for entry in report["recorded"]] == ["0001"]
