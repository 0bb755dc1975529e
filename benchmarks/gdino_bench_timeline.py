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
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timeline:
    """The model calls of one run, as (start, end) ``perf_counter`` pairs."""

    calls: list[tuple[float, float]] = field(default_factory=list)
    images: int = 0

    def summary(self, start: float, end: float) -> dict[str, float]:
        """The run's wall time cut into the four parts, in milliseconds."""
        calls = sorted(self.calls)
        if not calls:
            return {"total_ms": (end - start) * 1e3, "forward_calls": 0}
        gaps = [b[0] - a[1] for a, b in zip(calls, calls[1:], strict=False)]
        return {
            "total_ms": (end - start) * 1e3,
            "forward_calls": len(calls),
            "before_first_forward_ms": (calls[0][0] - start) * 1e3,
            "in_forwards_ms": sum(e - s for s, e in calls) * 1e3,
            "between_forwards_ms": sum(gaps) * 1e3,
            "longest_between_ms": max(gaps, default=0.0) * 1e3,
            "after_last_forward_ms": (end - calls[-1][1]) * 1e3,
        }


def timed_runs(
    backend: Any, run: Callable[[], object], repeats: int
) -> list[dict[str, float]]:
    """``run`` (one pipeline run) ``repeats`` times, each cut into its parts."""
    timeline = Timeline()
    original = backend.predict_prepared

    @functools.wraps(original)
    def predict_prepared(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timeline.calls.append((started, time.perf_counter()))

    backend.predict_prepared = predict_prepared
    summaries = []
    try:
        for _ in range(repeats):
            timeline.calls.clear()
            start = time.perf_counter()
            run()
            summaries.append(timeline.summary(start, time.perf_counter()))
    finally:
        del backend.predict_prepared  # the class's method again
    return summaries


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
        [index + 1, *(round(s.get(n, 0.0), 1) for n in names)]
        for index, s in enumerate(summaries)
    ]
    headers = ["run", "total", "calls", "before 1st", "in fwd", "between"]
    headers += ["max gap", "after"]
    return "timeline of (b), ms:\n" + format_table(headers, rows)
