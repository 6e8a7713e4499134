"""The leaderboard platform: upload a logged submission, wait for its score, and sync the log with
what the platform lists (public scores, and private ones once the competition publishes them).

`[leaderboard] backend` picks the platform. "manual" has none: files are uploaded on the site and
scores typed in with `lb record`; nothing here runs and the `kaggle` package is never imported.
"kaggle" reaches Kaggle through `KagglePlatform`, and `kaggle_api()` is the one place the `kaggle`
package is imported (tests replace it with a fake platform).

An upload's description carries the log id, source and CV (`#0007 lead cv=19.84`). Sync matches
each listed submission to a log row by the reference recorded at upload, else by the id and source
in its description, else by the file's sha256 when the platform gives one; it fills empty scores,
updates scores it fetched itself before, and replaces a score typed by hand only with `force`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Protocol

import pandas as pd

from ..errors import LeaderboardError, SubmissionError
from ..results.tracking import record_leaderboard
from ..workspace.config import Config, LeaderboardConfig
from .submission import LB_RANGE, SCORE_RULE, edit_log, find_row, now_utc, read_log, score_problem, submissions_dir

# "#0007 lead#s13 cv=19.84 free note": the log id and source lead every description we upload.
DESCRIPTION = re.compile(r"#(\d+) (\S+)")
DESCRIPTION_LIMIT = 200
RETRY_BASE_S = 2.0  # first pause after a network error; doubled after each further failure
# Pages of the platform's list, numbered from 1 as the client's `page` (legacy CLI: -p); 20 is the
# client's own page size. The client drops the response's next-page token, so paging stops at the
# first page that brings nothing new (also right if a server ignored page numbers).
PAGE_SIZE = 20
MAX_PAGES = 100
STATUSES = ("pending", "complete", "error")
# The platform's words for "your team has used today's submissions".
DAILY_LIMIT = re.compile(r"daily|allowance|per day|submission limit", re.I)
HOURS_LEFT = re.compile(r"([\d.]+)\s*hours?\s+from now", re.I)


@dataclass
class PlatformSubmission:
    """One submission as the platform lists it (scores as the platform shows them, before score_scale)."""

    ref: str
    description: str = ""
    file_name: str = ""
    submitted_at: str = ""  # UTC ISO 8601
    status: str = "pending"  # pending, complete or error
    public: float | None = None
    private: float | None = None
    error: str = ""  # the platform's text when status is error
    sha256: str = ""  # only where the platform gives it (Kaggle does not)


class Platform(Protocol):
    def submit(self, path: Path, description: str) -> str:
        """Upload `path` with `description`; return the platform's reference for it."""

    def submissions(self) -> list[PlatformSubmission]:
        """Every submission of the team, in any order."""


class DailyLimitReached(LeaderboardError):
    """The platform accepts no more submissions today."""


class PlatformUnreachable(LeaderboardError):
    """Network errors or timeouts outlasted every retry."""


def pause(seconds: float) -> None:
    """The wait between polls and retries (tests replace it to run instantly)."""
    time.sleep(seconds)


def monotonic() -> float:
    return time.monotonic()


# --- the Kaggle seam ------------------------------------------------------------------------------
# Written against the official client `kaggle` 2.2.5 (kagglesdk 0.1.38); the calls used are the same
# since 1.7: KaggleApi.competition_submit(file_name, message, competition, quiet) returns an
# ApiCreateSubmissionResponse (.ref, 0 when refused, and .message); KaggleApi.competition_submissions(
# competition, page_number=, page_size=) returns ApiSubmission objects (.ref, .date, .description,
# .file_name, .status SubmissionStatus.PENDING/COMPLETE/ERROR, .public_score and .private_score as
# strings, "" until scored, .error_description). Refusals are requests.HTTPError whose text is the
# platform's message and whose .response.status_code is the HTTP status; network failures are
# requests' ConnectionError and Timeout (OSErrors without a response).

KAGGLE_MISSING = ("the kaggle backend needs the official kaggle package: pip install 'competition[kaggle]' "
                  "(or .venv/bin/pip install kaggle), or set [leaderboard] backend = \"manual\"")
NO_CREDENTIALS = ("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save the "
                  "token from kaggle.com/settings (API, Create New Token) as ~/.kaggle/kaggle.json with chmod 600")


def kaggle_api():
    """The authenticated KaggleApi of the official client: the only import of `kaggle`. Credentials
    are read by the client itself (environment or ~/.kaggle/kaggle.json); we never store them."""
    try:
        # kaggle < 2.2 prints help and calls exit(1) while importing when it finds no credentials.
        with contextlib.redirect_stdout(io.StringIO()):
            import kaggle
    except ImportError as error:
        if (error.name or "kaggle").split(".")[0] == "kaggle":
            raise LeaderboardError(KAGGLE_MISSING) from None
        raise LeaderboardError(f"the kaggle package is installed but does not import ({error}): "
                               f"pip install {error.name} (a dependency it lacks), or reinstall kaggle") from None
    except SystemExit:
        raise LeaderboardError(NO_CREDENTIALS) from None
    api = kaggle.api
    values = getattr(api, "config_values", None) or {}
    if not (values.get("username") or values.get("token")):
        raise LeaderboardError(NO_CREDENTIALS)
    return api


def _message(error: BaseException) -> str:
    """The platform's own words for a refusal, on one line."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:300]


def _number(text) -> float | None:
    try:
        return None if text is None or str(text).strip() == "" else float(text)
    except ValueError:
        return None


def _iso(value) -> str:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="seconds")
    return "" if value is None else str(value)


def daily_limit_error(message: str, competition: str, now: datetime | None = None) -> DailyLimitReached:
    """The daily-limit refusal, saying when the allowance resets when the platform says."""
    hours = HOURS_LEFT.search(message)
    if hours:
        moment = (now or datetime.now(timezone.utc)) + timedelta(hours=float(hours.group(1)))
        reset = f"it resets in {float(hours.group(1)):g} h, about {moment:%Y-%m-%d %H:%M} UTC"
    else:
        reset = "Kaggle resets daily allowances at 00:00 UTC"
    return DailyLimitReached(f"Kaggle's daily submission limit for {competition} is reached ({message}); {reset}: "
                             f"upload then with `competition lb upload ID`")


class KagglePlatform:
    """Kaggle, through the official client: retries network errors with backoff, and turns every
    refusal into one LeaderboardError line with its fix."""

    def __init__(self, settings: LeaderboardConfig, api=None, sleep: Callable[[float], None] | None = None):
        self.settings = settings
        self.competition = settings.competition
        self.api = kaggle_api() if api is None else api
        self.sleep = sleep

    def _refusal(self, error: BaseException, what: str, path: Path | None) -> LeaderboardError | None:
        """The error to stop with, or None when the failure is worth another try."""
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        message = _message(error)
        slug = self.competition
        if DAILY_LIMIT.search(message):
            return daily_limit_error(message, slug)
        if status is None:
            return None if isinstance(error, OSError) else LeaderboardError(
                f"Kaggle's client failed during {what} ({type(error).__name__}: {message}): try again; "
                f"if it persists, update it (pip install -U kaggle)")
        if status == 429 or status >= 500:
            return None
        if status == 401:
            return LeaderboardError(f"Kaggle refused the credentials (401: {message}): make a new API token on "
                                    f"kaggle.com/settings; set KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json")
        if status == 403 or "rules" in message.lower():
            return LeaderboardError(f"Kaggle refused {what} ({status}: {message}): join {slug} and accept its rules "
                                    f"at https://www.kaggle.com/competitions/{slug}/rules as your API token's user")
        if status == 404:
            return LeaderboardError(f"no Kaggle competition {slug!r} ({status}: {message}): set [leaderboard] "
                                    f"competition to the SLUG of kaggle.com/competitions/SLUG")
        if path is not None:
            return LeaderboardError(f"Kaggle rejected {path.name} ({status}: {message}): fix the file (it must have "
                                    f"the sample submission's ids and columns) and upload again")
        return LeaderboardError(f"Kaggle refused {what} ({status}: {message}): check [leaderboard] in "
                                f"competition.toml and try again")

    def _call(self, what: str, action: Callable, path: Path | None = None, recheck: Callable | None = None):
        """`action()`, tried `settings.tries` times with pauses of 2, 4, 8 ... s on network errors.
        `recheck()` runs before each retry and may return the result (an upload that got through)."""
        last: BaseException | None = None
        for attempt in range(1, self.settings.tries + 1):
            if attempt > 1:
                (self.sleep or pause)(RETRY_BASE_S * 2 ** (attempt - 2))
                if recheck is not None:
                    with contextlib.suppress(Exception):
                        found = recheck()
                        if found is not None:
                            return found
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the client prints progress; stdout stays ours
                    return action()
            except LeaderboardError:
                raise
            except Exception as error:
                refusal = self._refusal(error, what, path)
                if refusal is not None:
                    raise refusal from None
                last = error
        raise PlatformUnreachable(f"Kaggle did not answer {what} after {self.settings.tries} tries "
                                  f"({type(last).__name__}: {_message(last)}): check the network and run the "
                                  f"same command again")

    def submit(self, path: Path, description: str) -> str:
        def upload() -> str:
            response = self.api.competition_submit(str(path), description, self.competition, quiet=True)
            ref = getattr(response, "ref", 0)
            if ref:
                return str(ref)
            # No reference: the platform refused it and said why in the message.
            message = " ".join(str(getattr(response, "message", "") or "no reference returned").split())
            if DAILY_LIMIT.search(message):
                raise daily_limit_error(message, self.competition)
            raise LeaderboardError(f"Kaggle did not accept {path.name} ({message}): fix the file or "
                                   f"[leaderboard] competition, and upload again")

        def already_there() -> str | None:
            # A timed-out upload may have arrived: never upload (and spend the allowance) twice.
            found = [item for item in self._page(1) if item.description == description]
            return found[0].ref if found else None

        return self._call(f"the upload of {path.name}", upload, path, already_there)

    def _page(self, number: int) -> list[PlatformSubmission]:
        items = self.api.competition_submissions(self.competition, page_number=number, page_size=PAGE_SIZE)
        return [self._convert(item) for item in items or [] if item is not None]

    def submissions(self) -> list[PlatformSubmission]:
        found: dict[str, PlatformSubmission] = {}
        for number in range(1, MAX_PAGES + 1):
            page = self._call("the submission list", lambda: self._page(number))
            new = [item for item in page if item.ref not in found]
            if not new:  # past the last page (or a client that ignores page numbers)
                break
            found.update((item.ref, item) for item in new)
        return list(found.values())

    @staticmethod
    def _convert(item) -> PlatformSubmission:
        status = str(getattr(item.status, "name", item.status)).rpartition(".")[2].lower()
        return PlatformSubmission(
            ref=str(item.ref), description=item.description or "", file_name=item.file_name or "",
            submitted_at=_iso(item.date), status=status if status in STATUSES else "pending",
            public=_number(item.public_score), private=_number(item.private_score),
            error=" ".join(str(item.error_description or "").split()))


def open_platform(config: Config) -> Platform:
    """The platform [leaderboard] backend names; refused for "manual", which has none."""
    settings = config.leaderboard
    if settings.backend == "manual":
        raise LeaderboardError('[leaderboard] backend is "manual" (no platform API): upload the file on the '
                               'competition site and type its score with `competition lb record ID --public X`; '
                               'for Kaggle set backend = "kaggle" and competition = "SLUG" in competition.toml')
    return KagglePlatform(settings)


# --- matching and syncing -------------------------------------------------------------------------

def describe(row: dict) -> str:
    """The upload's description: `#ID SOURCE cv=CV` and the note, which sync reads back."""
    cv = _number(row.get("oof_final"))
    text = f"#{row['id']} {row['source']}" + (f" cv={cv:.2f}" if cv is not None else "")
    note = " ".join(str(row.get("note", "")).split())
    return (f"{text} {note}" if note else text)[:DESCRIPTION_LIMIT]


def parse_description(text: str) -> tuple[int, str] | None:
    """(log id, source) from a description written by `describe`, None for any other."""
    match = DESCRIPTION.match(text.strip())
    return (int(match.group(1)), match.group(2)) if match else None


Match = tuple[int, PlatformSubmission, str]  # (log position, platform submission, matched by)


def match_submissions(log: pd.DataFrame, listed: list[PlatformSubmission]) -> tuple[list[Match], list[dict]]:
    """([(log position, submission, matched by "ref", "description" or "sha256")], [unmatched
    submissions with the reason]). A row takes one platform submission: the one whose reference it
    holds, else the oldest that names it."""
    by_ref = {ref: position for position, ref in enumerate(log["lb_ref"]) if ref}
    by_id = {int(value): position for position, value in enumerate(log["id"]) if value.isdigit()}
    by_sha = {}
    for position, digest in enumerate(log["sha256"]):
        by_sha.setdefault(digest, position)
    taken = set(by_ref.values())
    matched, unmatched = [], []
    for item in sorted(listed, key=lambda entry: (entry.submitted_at, entry.ref)):
        if item.ref in by_ref:
            matched.append((by_ref[item.ref], item, "ref"))
            continue
        named = parse_description(item.description)
        candidates = []
        if named and named[0] in by_id and log.iloc[by_id[named[0]]]["source"] == named[1]:
            candidates.append((by_id[named[0]], "description"))
        if item.sha256 and item.sha256 in by_sha:
            candidates.append((by_sha[item.sha256], "sha256"))
        free = [(position, how) for position, how in candidates if position not in taken]
        if free:
            position, how = free[0]
            taken.add(position)
            matched.append((position, item, how))
            continue
        if candidates:
            position = candidates[0][0]
            reason = (f"log row {log.iloc[position]['id']} already holds reference "
                      f"{log.iloc[position]['lb_ref'] or 'of another upload'}: an upload made twice")
        elif named:
            reason = f"no log row {named[0]:04d} with source {named[1]!r} (another workspace's upload?)"
        else:
            reason = "made outside this toolkit: no #ID in its description and no known file"
        unmatched.append({**_listed(item), "reason": reason})
    return matched, unmatched


def _listed(item: PlatformSubmission) -> dict:
    shown = asdict(item)
    shown.pop("sha256")
    return shown


def sync(config: Config, platform: Platform, force: bool = False,
         listed: list[PlatformSubmission] | None = None) -> dict:
    """Fill the log from the platform's list; returns what changed and what did not, and why.

    Empty scores are filled, scores fetched by an earlier sync follow the platform, scores typed by
    hand are kept (reported) unless `force`, implausible ones (`score_problem`) are refused unless
    `force`. Pending and failed submissions are reported with the platform's text."""
    listed = platform.submissions() if listed is None else listed
    scale = config.leaderboard.score_scale
    report = {"listed": len(listed), "recorded": [], "linked": [], "kept": [], "refused": [], "pending": [],
              "failed": [], "unmatched": []}
    changed_rows = []
    with edit_log(config) as edit:
        matched, report["unmatched"] = match_submissions(edit.log, listed)
        for position, item, how in matched:
            row = edit.log.iloc[position]
            submission_id = row["id"]
            if not row["lb_ref"]:
                edit.set(position, "lb_ref", item.ref)
                if not row["uploaded_at"]:
                    edit.set(position, "uploaded_at", item.submitted_at)
                report["linked"].append({"id": submission_id, "ref": item.ref, "by": how})
            if item.status != "complete":
                entry = {"id": submission_id, "ref": item.ref, "description": item.description}
                if item.status == "error":
                    report["failed"].append({**entry, "error": item.error or "(the platform gave no reason)"})
                else:
                    report["pending"].append(entry)
                continue
            texts = {}
            for column, shown in (("public", item.public), ("private", item.private)):
                if shown is None:
                    continue
                value = round(shown * scale, 4)
                text, current = f"{value:.4f}", edit.log.iloc[position][column]
                if text == current:
                    continue
                entry = {"id": submission_id, "ref": item.ref, "column": column, "log": current, "platform": text}
                if edit.origin(position, column) == "hand" and not force:
                    report["kept"].append(entry)
                    continue
                if not LB_RANGE[0] <= value <= LB_RANGE[1]:
                    problem = f"{column} {value:.4f} is outside {LB_RANGE[0]:g}-{LB_RANGE[1]:g}"
                else:
                    problem = None if force else score_problem(edit.log, position, column, value)
                if problem:
                    report["refused"].append({**entry, "problem": problem})
                    continue
                texts[column] = text
                report["recorded"].append(entry)
            if texts:
                edit.record(position, texts.get("public", ""), texts.get("private", ""), by="sync")
                changed_rows.append(position)
        rows = [edit.log.iloc[position].to_dict() for position in changed_rows]
    for row in rows:  # after the lock: MLflow is a view, never in the log's way
        record_leaderboard(config, row, submissions_dir(config))
    return report


SYNC_REFUSAL_FIX = ("set [leaderboard] score_scale = 100 if the platform shows 0-1 scores, or pass --force "
                    f"if they are right ({SCORE_RULE})")


# --- uploading ------------------------------------------------------------------------------------

def _logged_row(config: Config, key: str) -> dict:
    log = read_log(config)
    return log.iloc[find_row(log, key, str(submissions_dir(config) / "log.csv"))].to_dict()


def upload(config: Config, key: str, platform: Platform, force: bool = False) -> dict:
    """Upload a logged submission's file with its description; record the platform's reference
    and the upload time in the log; returns the updated row. Refuses a file changed since it was
    logged, and a second upload of one submission unless `force`."""
    row = _logged_row(config, key)
    path = submissions_dir(config) / row["file"]
    if not path.exists():
        raise SubmissionError(f"{path} not found: it is in the log but not on disk; restore it from git")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != row["sha256"]:
        raise SubmissionError(f"{path.name} changed since it was logged (sha256 {digest[:12]}, log "
                              f"{row['sha256'][:12]}): restore it from git, or submit its source again")
    if row["lb_ref"] and not force:
        raise SubmissionError(f"submission {row['id']} is already uploaded (reference {row['lb_ref']}, "
                              f"{row['uploaded_at'] or 'time unknown'}): `competition lb sync` fetches its score; "
                              f"pass --force to upload it again")
    ref = platform.submit(path, describe(row))
    with edit_log(config) as edit:
        position = edit.find(row["id"])
        edit.set(position, "lb_ref", ref)
        edit.set(position, "uploaded_at", now_utc())
        return edit.log.iloc[position].to_dict()


def wait_for_score(config: Config, key: str, platform: Platform, sleep: Callable[[float], None] | None = None,
                   clock: Callable[[], float] | None = None) -> dict:
    """Poll the platform until it has scored an uploaded submission (pauses from poll_s doubling to
    poll_max_s, for at most wait_s), then sync that submission. Returns status ("complete", "error"
    or "pending" when time ran out), the platform's error text, the sync report and the log row.
    Interrupting it loses nothing: the upload is already in the log and `lb sync` finishes the job."""
    settings = config.leaderboard
    sleep, clock = sleep or pause, clock or monotonic
    row = _logged_row(config, key)
    if not row["lb_ref"]:
        raise SubmissionError(f"submission {row['id']} has not been uploaded: `competition lb upload {row['id']}` "
                              f"first")
    started = clock()
    delay = settings.poll_s
    while True:
        found = [item for item in platform.submissions() if item.ref == row["lb_ref"]]
        if found and found[0].status != "pending":
            break
        if clock() + delay > started + settings.wait_s:
            return {"status": "pending", "error": "", "waited_s": round(clock() - started, 1), "sync": None,
                    "row": row}
        sleep(delay)
        delay = min(delay * 2, settings.poll_max_s)
    item = found[0]
    report = sync(config, platform, listed=[item])
    return {"status": item.status, "error": item.error, "waited_s": round(clock() - started, 1), "sync": report,
            "row": _logged_row(config, row["id"])}
