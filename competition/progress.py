"""Progress of long work, readable wherever stderr goes.

On a terminal: a tqdm bar with done/total, its rate and the time left. Anywhere else (a log file,
CI, a pipe): no bar, whose carriage returns would run into the next line of output, but a line
about every LOG_EVERY_S seconds while a stage runs (done/total, rate, time left) and one when it
ends, with its count, time and rate. Rates keep their significant digits and turn into seconds
per unit below one per second, so a slow stage never reads "0.0 rows/s". `stage` names what the
bars below it belong to (`run` sets "NAME fold K OOF"). Every long loop in the package reports
through `progress`; a note that every fold or result would repeat goes through `say_once`.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Iterable, Iterator

from tqdm.auto import tqdm

LOG_EVERY_S = 30.0  # off a terminal: seconds between two lines of a running stage
_STAGE: contextvars.ContextVar[str] = contextvars.ContextVar("progress_stage", default="")
_said: set[str] = set()


def say_once(line: str) -> None:
    """`line` on stderr, once per process: a run loads a model for every fold and a pipeline logs
    many results, and the same note each time would bury the progress lines."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (bars) or not (lines)."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


@contextlib.contextmanager
def stage(label: str):
    """Within the block, every progress description starts with `label` ("smol fold 0 OOF")."""
    token = _STAGE.set(label)
    try:
        yield
    finally:
        _STAGE.reset(token)


def current_stage() -> str:
    return _STAGE.get()


def singular(unit: str) -> str:
    """"row" for "rows", "batch" for "batches" (the unit's name per item, as in "s/row")."""
    if unit.endswith(("ches", "shes", "sses", "xes")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def rate_text(count: float, seconds: float, unit: str) -> str:
    """"12.3 rows/s", or "4.2 s/row" below one per second; "" when nothing was counted."""
    if count <= 0 or seconds <= 0:
        return ""
    rate = count / seconds
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 10:
        return f"{rate:.1f} {unit}/s"
    if rate >= 1:
        return f"{rate:.2f} {unit}/s"
    per_unit = seconds / count
    return f"{per_unit:.3g} s/{singular(unit)}" if per_unit < 100 else f"{per_unit:,.0f} s/{singular(unit)}"


def duration_text(seconds: float) -> str:
    """"45 s", "3 min 05 s", "1 h 02 min"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StageLine:
    """A tqdm stand-in for non-terminals: counts, says every LOG_EVERY_S seconds where it is
    (done/total, rate, time left) and once, on close, how long the stage took."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, initial: int = 0):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.postfix = ""
        self._start = self._last_line = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "StageLine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        finished = bool(self.total) and self.n >= self.total  # the closing line says it ("N rows in ...")
        if now - self._last_line >= LOG_EVERY_S and not self._closed and not finished:
            self._last_line = now
            self._say(self.running_line(now - self._start))

    def running_line(self, seconds: float) -> str:
        """"desc: 40/150 rows, 1.53 s/row, 2 min 48 s left; loss=1.62" (the time left needs a total)."""
        done = self.n - self.initial
        count = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        parts = [f"{count} {self.unit}"]
        rate = rate_text(done, seconds, self.unit)
        if rate:
            parts.append(rate)
        if self.total and done > 0:
            parts.append(f"{duration_text((self.total - self.n) * seconds / done)} left")
        return f"{self.desc}: {', '.join(parts)}" + (f"; {self.postfix}" if self.postfix else "")

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, values: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in {**(values or {}), **kwargs}.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        self._say(text)

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        seconds = time.perf_counter() - self._start
        rate = rate_text(self.n - self.initial, seconds, self.unit)
        took = f"{seconds:.1f} s" if seconds < 60 else duration_text(seconds)
        extra = f"; {self.postfix}" if self.postfix else ""
        self._say(f"{self.desc}: {self.n:,} {self.unit} in {took}" + (f", {rate}" if rate else "") + extra)


class Silent(StageLine):
    """Progress turned off: counts, says nothing."""

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def quiet_library_bars() -> None:
    """Off a terminal, turn off the bars transformers, datasets and huggingface_hub draw while
    loading, converting and mapping (their carriage returns fill a log with one endless line);
    on a terminal they stay."""
    if on_terminal():
        return
    import datasets
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # huggingface_hub's bars too
    datasets.disable_progress_bars()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "rows",
             enabled: bool = True, leave: bool = False, initial: int = 0):
    """A progress reporter over `iterable` (or updated by hand with `total`, starting at `initial`):
    a tqdm bar on a terminal, lines elsewhere, nothing when not `enabled`. The description starts
    with the current `stage`."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    desc = f"{current_stage()} {desc}".strip()
    if not enabled:
        return Silent(iterable, total, desc, unit, initial)
    if on_terminal():
        # tqdm shows done/total, the rate (s/row when slow) and the time left; unit_scale off keeps counts exact
        return tqdm(iterable, total=total, desc=desc, unit=singular(unit), file=sys.stderr, leave=leave,
                    dynamic_ncols=True, initial=initial)
    return StageLine(iterable, total, desc, unit, initial)
