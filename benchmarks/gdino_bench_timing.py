"""Repeated timings of the modes, interleaved, with CPU utilisation beside each."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """Repeated timings of one mode.

    ``cpu_utils`` is process CPU time / wall time: about the thread count on an idle
    machine, lower when other processes take the cores, so a noisy figure shows as such.
    """

    mode: str
    images: int
    walls: list[float] = field(default_factory=list)
    cpu_utils: list[float] = field(default_factory=list)
    detections_per_image: float | None = None

    def add(self, wall: float, cpu_util: float) -> None:
        self.walls.append(wall)
        self.cpu_utils.append(cpu_util)

    @property
    def best_wall(self) -> float:
        return min(self.walls)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def best_ips(self) -> float:
        return self.images / self.best_wall

    @property
    def median_ips(self) -> float:
        return self.images / self.median_wall

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "images": self.images,
            "walls_s": [round(w, 4) for w in self.walls],
            "cpu_utils": [round(u, 2) for u in self.cpu_utils],
            "images_per_s_best": round(self.best_ips, 4),
            "images_per_s_median": round(self.median_ips, 4),
            "detections_per_image": self.detections_per_image,
        }


def timed(run: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, float, Any]:
    """Wall seconds, CPU utilisation and result of ``run``; ``sync`` awaits the GPU."""
    sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = run()
    sync()
    wall = time.perf_counter() - wall0
    return wall, (time.process_time() - cpu0) / wall, result


def device_sync(device: Any) -> Callable[[], None]:
    """A function that waits for queued GPU work, or does nothing on CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


MODE_NAMES = {
    "a": "(a) raw batched forward",
    "b": "(b) full pipeline",
    "c": "(c) naive per-class loop",
}


def time_modes(
    modes: dict[str, tuple[int, Callable[[], Any]]],
    *,
    repeats: int,
    sync: Callable[[], None],
    deadline: float | None = None,
    label: str = "",
) -> dict[str, Measurement]:
    """Time each mode ``repeats`` times; ``modes`` maps a key to (images, run).

    Each repeat runs every mode in turn, so background load hits all modes alike. Past
    ``deadline`` (a ``time.perf_counter`` value) no further repeat starts, but every
    mode keeps at least one timing.
    """
    measurements = {
        key: Measurement(MODE_NAMES.get(key, key), images)
        for key, (images, _) in modes.items()
    }
    for repeat in range(repeats):
        if repeat and deadline is not None and time.perf_counter() > deadline:
            print(f"  {label}time budget reached: {repeat} repeat(s) only", flush=True)
            break
        for key, (_, run) in modes.items():
            wall, util, result = timed(run, sync)
            measurements[key].add(wall, util)
            if isinstance(result, float):
                measurements[key].detections_per_image = round(result, 1)
            print(
                f"  {label}repeat {repeat + 1}/{repeats} {key}: {wall:7.2f} s, "
                f"cpu util {util:.2f}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    return measurements
