"""``--timeline``: where, in one pipeline run, the model thread is not running it.

b/a says how much slower the pipeline is than the bare forwards; this says why. The
backend's ``predict_prepared`` (the model's half of a ``PreparesAhead`` backend) is
timed on every call of one (b) run, and the run's wall time is cut into:

- before the first forward: discovering the chunk, decoding and preparing the first
  batch (the pipeline's fill, paid once per chunk);
- in forwards: ``predict_prepared`` itself (the model, plus the score and box
  extraction that stays on the model thread);
- between forwards: what the model thread does between two calls (taking the next
  batch, handing the last one to post-processing). Near zero when the feeder keeps up;
- after the last forward: the drain (the last batch's post-processing) and writing
  the chunk's two Parquet shards.

With ``--sleeping-forward`` the forward takes no CPU, so "in forwards" minus the sleep
is the model thread's own host work, and the rest is what a GPU would wait for.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ForwardTimeline:
    """While entered, times every call of ``backend.predict_prepared`` (the model's
    half of a ``PreparesAhead`` backend); ``timed(run)`` cuts each run into parts."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls: list[tuple[float, float]] = []  # (start, end), perf_counter
        self.runs: list[dict[str, float]] = []  # one summary per timed run

    def __enter__(self) -> ForwardTimeline:
        original = self.backend.predict_prepared

        @functools.wraps(original)
        def predict_prepared(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append((started, time.perf_counter()))

        self.backend.predict_prepared = predict_prepared
        return self

    def __exit__(self, *exc: object) -> None:
        del self.backend.predict_prepared  # the class's method again

    def timed(self, run: Callable[[], T]) -> Callable[[], T]:
        """``run``, recording the summary of each call in ``runs``."""

        def timed_run() -> T:
            self.calls.clear()
            start = time.perf_counter()
            try:
                return run()
            finally:
                self.runs.append(summary(self.calls, start, time.perf_counter()))

        return timed_run


def summary(
    calls: list[tuple[float, float]], start: float, end: float
) -> dict[str, float]:
    """A run's wall time cut into the four parts, in milliseconds (0.1 ms steps)."""
    calls = sorted(calls)
    if not calls:
        return {"total_ms": _ms(end - start), "forward_calls": 0}
    gaps = [b[0] - a[1] for a, b in zip(calls, calls[1:], strict=False)]
    return {
        "total_ms": _ms(end - start),
        "forward_calls": len(calls),
        "before_first_forward_ms": _ms(calls[0][0] - start),
        "in_forwards_ms": _ms(sum(e - s for s, e in calls)),
        "between_forwards_ms": _ms(sum(gaps)),
        "longest_between_ms": _ms(max(gaps, default=0.0)),
        "after_last_forward_ms": _ms(end - calls[-1][1]),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def timed_runs(
    backend: Any, run: Callable[[], object], repeats: int
) -> list[dict[str, float]]:
    """``run`` (one pipeline run) ``repeats`` times, each cut into its parts."""
    with ForwardTimeline(backend) as timeline:
        timed = timeline.timed(run)
        for _ in range(repeats):
            timed()
    return timeline.runs


def format_timeline(summaries: list[dict[str, float]]) -> str:
    """One row per run, in milliseconds."""
    from gdino_bench_report import format_table

    names = [
        "total_ms",
        "forward_calls",
        "before_first_forward_ms",
        "in_forwards_ms",
        "between_forwards_ms",
        "longest_between_ms",
        "after_last_forward_ms",
    ]
    rows = [
        [index + 1, *(s.get(n, 0.0) for n in names)]
        for index, s in enumerate(summaries)
    ]
    headers = ["run", "total", "calls", "before 1st", "in fwd", "between"]
    headers += ["max gap", "after"]
    return "timeline of (b), ms:\n" + format_table(headers, rows)
