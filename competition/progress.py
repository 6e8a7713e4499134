"""Progress of long work, readable wherever stderr goes.

On a terminal: a tqdm bar with its rate (rows/s). Anywhere else (a log file, CI, a pipe): no bar,
whose carriage returns would run into the next line of output, but one line per stage when it ends,
with its count, time and rate. Every long loop in the package reports through `progress`.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (bars) or not (one line per stage)."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class StageLine:
    """A tqdm stand-in for non-terminals: counts, and says once, on close, how long the stage took."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> "StageLine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, values: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in {**(values or {}), **kwargs}.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        seconds = time.perf_counter() - self._start
        rate = f", {self.n / seconds:,.1f} {self.unit}/s" if seconds > 0 and self.n else ""
        extra = f"; {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n:,} {self.unit} in {seconds:.1f} s{rate}{extra}", file=sys.stderr, flush=True)


class Silent(StageLine):
    """Progress turned off: counts, says nothing."""

    def close(self) -> None:
        self._closed = True


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "rows",
             enabled: bool = True, leave: bool = False):
    """A progress reporter over `iterable` (or updated by hand with `total`): a tqdm bar on a
    terminal, one closing line per stage elsewhere, nothing when not `enabled`."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return Silent(iterable, total, desc, unit)
    if on_terminal():

        return tqdm(iterable, total=total, desc=desc, unit=unit.rstrip("s") or unit, file=sys.stderr, leave=leave,
                    dynamic_ncols=True)
    return StageLine(iterable, total, desc, unit)
