"""Files written whole or not at all: a temp file beside the target, fsynced, then renamed over it,
so a killed run never leaves a half file that looks complete. Every stage writes through here."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

TEMP_SUFFIX = ".tmp"


# A temp file this old was left by a killed writer (live writers finish in seconds): removed.
STALE_TEMP_SECONDS = 600


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (another thread may be
    creating files at this moment), else by the classic set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8, line ends as given) to a temp file beside `path`, fsync it, then rename
    it over `path`: readers, and a machine that loses power, see the old file or the new one."""
    path = Path(path)
    temp = write_temp(path, text)
    try:
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_temp(path: Path, text: str) -> Path:
    """`text` in a fsynced temp file beside `path` (.NAME.XXXX.tmp), with the permissions a plain
    open() would give (mkstemp's 0600 would hide it from teammates on a shared filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            os.fchmod(file.fileno(), 0o666 & ~_umask())
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Path(temp)


def remove_stale_temps(folder: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temp files a killed writer left in `folder` and its sub-folders up to two levels
    down (runs/NAME/fold_K), never a recent one (a writer may still be renaming it)."""

    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for pattern in (f".*{TEMP_SUFFIX}", f"*/.*{TEMP_SUFFIX}", f"*/*/.*{TEMP_SUFFIX}"):
        for temp in folder.glob(pattern):
            try:
                if now - temp.stat().st_mtime > older_than:
                    temp.unlink()
                    removed.append(temp)
            except OSError:  # renamed or removed by its writer meanwhile
                continue
    return removed


def _csv_field(value: str) -> str:
    """RFC 4180: a field holding a comma, a quote, CR or LF is quoted, quotes doubled. (The csv
    module leaves a lone CR unquoted when the line terminator is LF; readers then split the row.)"""
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_text(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A CSV document with LF line ends and minimal RFC 4180 quoting; None and NaN are empty
    fields (never the text "None" or "nan"), anything else is written as str(value)."""
    return "".join(",".join(_csv_field("" if _missing(value) else str(value)) for value in row) + "\n"
                   for row in [header, *rows])


def _missing(value: Any) -> bool:
    """None, NaN, pd.NA, NaT: what pandas calls missing, whatever the column's dtype."""
    return value is None or (pd.api.types.is_scalar(value) and not isinstance(value, str) and bool(pd.isna(value)))


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a frame as CSV atomically (csv_text): no index, LF line ends, fields holding a comma,
    quote, CR or LF quoted (so a summary with a lone CR reads back as one row), None/NaN empty."""
    return atomic_write_text(path, csv_text(frame.values.tolist(), [str(column) for column in frame.columns]))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n")
