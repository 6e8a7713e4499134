"""Loading, normalising and validating the competition files (CSV or DialogSum JSONL).

Real files carry a UTF-8 BOM, CRLF inside dialogues, stray spaces, control characters such as
\\x08 and, in some copies of sample_submission.csv, a leading unnamed index column: all are
normalised here, and every other problem is one DataError naming the file, the row and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import PACKAGE_DIR
from ..errors import DataError
from ..progress import say_once
from ..text import token_cache
from ..text.tokenizers import cached_tokens

SAMPLE_DIR = PACKAGE_DIR / "sample"  # 400 train, 99 dev, 200 test rows of the Korean data (see its README)
SPLITS = ("train", "dev", "test", "sample_submission")
REQUIRED_COLUMNS = {
    "train": ("fname", "dialogue"),
    "dev": ("fname", "dialogue"),
    "test": ("fname", "dialogue"),
    "sample_submission": ("fname", "summary"),
    "predictions": ("fname", "summary"),
    "references": ("fname",),
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TAG = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")
_SUMMARY_N = re.compile(r"^summary(\d+)$")


@dataclass
class CompetitionData:
    """The four competition tables; `dev` is None when the workspace has no dev file."""

    train: pd.DataFrame
    test: pd.DataFrame
    sample_submission: pd.DataFrame
    dev: pd.DataFrame | None = None


def normalise_text(text: str) -> str:
    """CRLF -> LF, control characters dropped, each line and the whole text stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: byte 0x{raw[error.start]:02x} is not UTF-8; "
                        f"re-save the file as UTF-8") from None


def _read_table(path: Path) -> pd.DataFrame:
    text = _decode(path)
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number}: not a JSON object ({error.msg}); "
                                f"one JSON object per line is expected") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number}: not a JSON object; one object per line is expected")
            records.append(record)
        frame = pd.DataFrame.from_records(records)
        return frame.astype(object).where(frame.notna(), "").astype(str)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: not a readable CSV ({str(error).strip()}); check quoting of multi-line fields") from None
    if len(frame.columns) and (frame.columns[0] == "" or str(frame.columns[0]).startswith("Unnamed: ")):
        frame = frame.drop(columns=frame.columns[0])
    return frame


def summary_columns(frame: pd.DataFrame) -> list[str]:
    """`summary1..N` in a multi-reference file, else `summary`.

    read_split copies summary1 into `summary` for code that wants one text per row, so `summary`
    must not count as another reference when numbered columns exist.
    """
    numbered = sorted((c for c in frame.columns if _SUMMARY_N.match(str(c))),
                      key=lambda c: int(_SUMMARY_N.match(c).group(1)))
    return numbered or (["summary"] if "summary" in frame.columns else [])


def references(frame: pd.DataFrame) -> list[list[str]]:
    """The non-empty reference summaries of each row (up to N per row)."""
    columns = summary_columns(frame)
    values = frame[columns].to_numpy() if columns else np.empty((len(frame), 0))
    return [[text for text in row if text] for row in values]


def _row_label(frame: pd.DataFrame, position: int) -> str:
    fname = frame["fname"].iloc[position] if "fname" in frame.columns else ""
    return f"row {position + 1}" + (f" (fname {fname})" if fname else "")


def read_split(path: str | Path, split: str) -> pd.DataFrame:
    """Read and validate one file; `split` is train, dev, test, sample_submission, predictions
    (fname,summary; summaries may be empty) or references (fname + summary or summary1..N)."""
    path = Path(path)
    if not path.exists():
        if split not in SPLITS:  # a file named on the command line (score's predictions or --refs)
            raise DataError(f"{path} not found: check the path of the {split} file you named")
        also = ' (or set dev = "" in [data] when there is no dev set)' if split == "dev" else ""
        raise DataError(f"{path} not found: put the competition's {split} file there "
                        f"or point [data] in competition.toml (or --data) at its folder{also}")
    frame = _read_table(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in REQUIRED_COLUMNS[split]:
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r} (has {', '.join(frame.columns) or 'none'}); "
                            f"{split} needs {', '.join(REQUIRED_COLUMNS[split])}")
    if not len(frame) and split in SPLITS:
        fix = 'or set dev = "" in [data] when there is no dev set' if split == "dev" else "check it is the right file"
        raise DataError(f"{path}: only a header, no rows: the {split} file needs at least one row; {fix}")
    if len(frame):  # column by column: DataFrame.map on pandas' Arrow strings costs ~4x the edits
        normalised = pd.DataFrame({position: [normalise_text(value) for value in frame.iloc[:, position].tolist()]
                                   for position in range(len(frame.columns))}, index=frame.index)
        normalised.columns = frame.columns
        frame = normalised
    fnames = frame["fname"]
    empty = np.flatnonzero(fnames.to_numpy() == "")
    if len(empty):
        raise DataError(f"{path} {_row_label(frame, int(empty[0]))}: empty fname; every row needs a unique id")
    duplicated = fnames[fnames.duplicated()]
    if len(duplicated):
        first = duplicated.iloc[0]
        rows = [str(i + 1) for i in np.flatnonzero(fnames.to_numpy() == first)]
        raise DataError(f"{path}: fname {first!r} appears more than once (rows {', '.join(rows)}); "
                        f"{len(duplicated)} duplicate(s) in all, ids must be unique")
    if "dialogue" in REQUIRED_COLUMNS[split]:
        empty = np.flatnonzero(frame["dialogue"].to_numpy() == "")
        if len(empty):
            raise DataError(f"{path} {_row_label(frame, int(empty[0]))}: empty dialogue "
                            f"({len(empty)} such row(s)); fix or remove them")
    if split in ("train", "dev", "references"):
        if not summary_columns(frame):
            raise DataError(f"{path}: missing column 'summary' (or summary1..N); {split} needs references")
        missing = [i for i, refs in enumerate(references(frame)) if not refs]
        if missing:
            raise DataError(f"{path} {_row_label(frame, missing[0])}: missing summary "
                            f"({len(missing)} such row(s)); {split} rows need a reference summary")
        if "summary" not in frame.columns:
            frame["summary"] = [refs[0] for refs in references(frame)]
    if split in ("train", "dev", "test") and "topic" not in frame.columns:
        frame["topic"] = ""
    return frame.reset_index(drop=True)


def check_test_ids(test: pd.DataFrame, sample: pd.DataFrame, test_path: str, sample_path: str) -> None:
    """The leaderboard wants exactly the sample_submission ids, in its order."""
    test_ids, sample_ids = list(test["fname"]), list(sample["fname"])
    only_test = sorted(set(test_ids) - set(sample_ids))
    only_sample = sorted(set(sample_ids) - set(test_ids))
    if only_test or only_sample:
        parts = []
        if only_test:
            parts.append(f"{len(only_test)} id(s) only in {test_path} (e.g. {', '.join(only_test[:3])})")
        if only_sample:
            parts.append(f"{len(only_sample)} id(s) only in {sample_path} (e.g. {', '.join(only_sample[:3])})")
        raise DataError("test ids differ from sample_submission ids: " + "; ".join(parts)
                        + "; use the test.csv and sample_submission.csv of the same release")
    if test_ids != sample_ids:
        position = next(i for i, (a, b) in enumerate(zip(test_ids, sample_ids)) if a != b)
        raise DataError(f"test ids are in a different order from sample_submission ids: row {position + 1} is "
                        f"{test_ids[position]} in {test_path} but {sample_ids[position]} in {sample_path}; "
                        f"use the files of the same release")


# The files last read by this process, keyed by their paths and contents (hashing is ~100x cheaper
# than parsing and validating): `submit` reads them for the leaderboard and again for provenance.
_loaded: dict[tuple, CompetitionData] = {}


def _file_key(path: Path) -> tuple:
    try:
        return (str(path.resolve()), hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    except OSError:
        return (str(path), None)


def _copied(data: CompetitionData) -> CompetitionData:
    """Fresh frames for the caller (they may be changed in place); the copies are cheap."""
    return dataclasses.replace(data, **{field.name: getattr(data, field.name).copy()
                                        for field in dataclasses.fields(data) if getattr(data, field.name) is not None})


def load_data(data_dir: str | Path, train: str = "train.csv", dev: str = "dev.csv", test: str = "test.csv",
              sample_submission: str = "sample_submission.csv") -> CompetitionData:
    """Read and validate the competition files in `data_dir`; dev "" means no dev file. A second
    call on unchanged files gets copies of what the first one read."""
    data_dir = Path(data_dir)
    key = tuple(_file_key(data_dir / name) if name else None for name in (train, dev, test, sample_submission))
    if key in _loaded:
        return _copied(_loaded[key])
    data = _read_data(data_dir, train, dev, test, sample_submission)
    _loaded.clear()
    _loaded[key] = data
    return _copied(data)


def _read_data(data_dir: Path, train: str, dev: str, test: str, sample_submission: str) -> CompetitionData:
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} not found: put train.csv, dev.csv, test.csv and "
                        f"sample_submission.csv there, or pass --data DIR")
    train_rows = read_split(data_dir / train, "train")
    dev_rows = read_split(data_dir / dev, "dev") if dev else None
    test_rows = read_split(data_dir / test, "test")
    sample = read_split(data_dir / sample_submission, "sample_submission")
    check_test_ids(test_rows, sample, str(data_dir / test), str(data_dir / sample_submission))
    return CompetitionData(train=train_rows, dev=dev_rows, test=test_rows, sample_submission=sample)


def data_folder(config, data_dir: str | Path | None = None) -> Path:
    """The folder the competition files are read from: `data_dir`, else [data] dir; when that is
    the untouched default `data/` and absent, the bundled sample (a fresh clone runs end to end),
    said once per process on stderr."""
    if data_dir:
        return Path(data_dir)
    folder = config.resolve(config.data.dir)
    if folder.exists() or dataclasses.asdict(config.data) != dataclasses.asdict(type(config.data)()):
        return folder

    say_once(f"note: no {folder}/ folder: using the bundled sample (400 train, 99 dev, 200 test rows of the Korean "
             f"data); put the competition files in {folder}/ (or pass --data DIR, make submit DATA=DIR)")
    return SAMPLE_DIR


def load_from_config(config, data_dir: str | Path | None = None) -> CompetitionData:
    """load_data with the [data] section of a Config; `data_dir` overrides its folder (see data_folder)."""
    files = config.data
    return load_data(data_folder(config, data_dir), files.train, files.dev, files.test, files.sample_submission)


# rows_sha256 of frames hashed before, by pandas' fast per-row hash of the same columns: in this
# process (submit fingerprints train, dev and test twice) and in the workspace's token cache (every
# command fingerprints them, ~0.2 s for 12k rows).
_fingerprints: dict[str, str] = {}
FINGERPRINT_IDENTITY = json.dumps({"rows_sha256": 1, "pandas": pd.__version__})


def rows_sha256(frame: pd.DataFrame) -> str:
    """A fingerprint of rows (ids, dialogues, references), independent of row order."""
    columns = ["fname", "dialogue"] + summary_columns(frame)
    ordered = frame.sort_values("fname")[columns]
    key = json.dumps(columns) + pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes().hex()
    if key in _fingerprints:
        return _fingerprints[key]
    store = token_cache.active_store()
    (digest,) = store.get_values(FINGERPRINT_IDENTITY, [key]) if store else (None,)
    if not isinstance(digest, str):
        digest = _rows_sha256(ordered)
        if store:
            store.put_values(FINGERPRINT_IDENTITY, [key], [digest])
    if len(_fingerprints) > 16:
        _fingerprints.clear()
    _fingerprints[key] = digest
    return digest


def _rows_sha256(ordered: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for row in ordered.itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _length_stats(lengths: Sequence[int]) -> dict:
    if not len(lengths):
        return {"median": 0, "p95": 0, "max": 0}
    values = np.asarray(lengths)
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "max": int(values.max())}


def describe(data: CompetitionData, tokenizer: str | None = None) -> dict:
    """Rows, lengths (characters, and tokens of the named tokenizer), tags found and dialogue
    overlap between splits. Tokens go through the process's token cache, which the near-duplicate
    search then reuses."""

    splits = {"train": data.train, "dev": data.dev, "test": data.test}
    splits = {name: frame for name, frame in splits.items() if frame is not None}
    summary: dict = {"rows": {name: len(frame) for name, frame in splits.items()}, "lengths": {}, "tags": {}}
    summary["rows"]["sample_submission"] = len(data.sample_submission)
    tag_counts: dict[str, int] = {}
    for name, frame in splits.items():
        stats = {}
        for column in ("dialogue", "summary"):
            if column not in frame.columns:
                continue
            texts = list(frame[column])
            stats[f"{column}_chars"] = _length_stats([len(t) for t in texts])
            if tokenizer is not None:
                stats[f"{column}_tokens"] = _length_stats([len(t) for t in cached_tokens(texts, tokenizer)])
            for text in texts:
                for tag in _TAG.findall(text):
                    tag_counts[tag] = tag_counts.get(tag, 0) + 1
        summary["lengths"][name] = stats
    summary["tags"] = dict(sorted(tag_counts.items(), key=lambda item: (-item[1], item[0])))
    folded = {name: set(" ".join(d.split()) for d in frame["dialogue"]) for name, frame in splits.items()}
    names = list(folded)
    summary["overlap"] = {f"{a}/{b}": len(folded[a] & folded[b])
                          for i, a in enumerate(names) for b in names[i + 1:]}
    return summary
