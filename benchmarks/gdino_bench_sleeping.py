"""``--sleeping-forward MS``: the model's forward replaced by a sleep of ``MS``
milliseconds per image, returning the real model's outputs for a batch of that shape,
so the CPU is free while "the model runs", as with a GPU.

On a shared CPU box the tiny-model proxy measures the host's CPU work as much as its
overlap with the model: the forward and the host threads take turns on the same cores.
With the forward asleep (``time.sleep`` releases the GIL and takes no CPU), (b) - (a)
is the time the model would wait for the host: decode and preparation not finished,
post-processing and Parquet not hidden. A fixed sleep, not a measured one, so runs
compare across loads and trees. The outputs are the real model's for the first batch
of each shape (replayed), so post-processing has real work; a timing proxy only,
never a labeling path.

The backend's other device work sleeps with it: the split processor's ``normalise``
(``model_loaders.split_processor``), which on a GPU runs there in well under a
millisecond a batch, is computed for the first batch of each shape and replayed after,
so that it does not take the host's CPU either.
"""

from __future__ import annotations

import time
from typing import Any


class SleepingForward:
    """Wraps a model: each call sleeps ``seconds_per_image`` x the batch and returns
    the real outputs of the first call with the same input shapes."""

    def __init__(self, model: Any, seconds_per_image: float) -> None:
        self.model = model
        self.seconds_per_image = seconds_per_image
        self.recorded: dict[tuple, Any] = {}

    def __call__(self, **inputs: Any) -> Any:
        key = tuple(
            (name, tuple(value.shape)) for name, value in sorted(inputs.items())
        )
        if key not in self.recorded:
            self.recorded[key] = self.model(**inputs)
        time.sleep(self.seconds_per_image * len(inputs["pixel_values"]))
        return self.recorded[key]

    def __getattr__(self, name: str) -> Any:  # config, parameters(), ...
        return getattr(self.model, name)


class ReplayedNormalise:
    """Wraps a split processor: ``normalise`` computes the first batch of each shape
    and returns that result again for every later batch of the shape."""

    def __init__(self, split: Any) -> None:
        self.split = split
        self.recorded: dict[tuple, Any] = {}

    def normalise(self, pixels: Any) -> Any:
        key = tuple(pixels.shape)
        if key not in self.recorded:
            self.recorded[key] = self.split.normalise(pixels)
        return self.recorded[key]

    def __call__(self, **kwargs: Any) -> Any:  # the host half, as it is
        return self.split(**kwargs)


def sleep_the_forward(backend: Any, ms_per_image: float) -> SleepingForward:
    """Swap ``backend.model`` (what (a) and (b) both call) for a ``SleepingForward``,
    and the split processor's device half, if any, for a ``ReplayedNormalise``."""
    sleeping = SleepingForward(backend.model, ms_per_image / 1000)
    backend.model = sleeping
    if getattr(backend, "split_processor", None) is not None:
        backend.split_processor = ReplayedNormalise(backend.split_processor)
    return sleeping
