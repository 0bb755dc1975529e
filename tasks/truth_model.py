"""What every ground-truth reader gives ``tasks.truth``, and the pieces they share.

A COCO file and a YOLO folder say the same things in different ways; both readers
produce one ``GroundTruth`` (boxes in absolute pixels, masks as the label table's RLE
JSON text) and fix boxes reaching outside their image the same way (``BoxFixes``), so
matching and evaluation never need to know which format the truth came in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRUTH_COLUMNS = [
    "truth_image",
    "class_name",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
    "mask",
]


class TruthError(ValueError):
    """Truth that cannot be read: one line naming the file and the reason."""


@dataclass(frozen=True)
class TruthImage:
    """One image the truth labels: its path as the truth names it (posix, relative to
    the truth's image folder), its size, and its content id when its file was found."""

    path: str
    width: int
    height: int
    content_id: str | None = None

    @classmethod
    def at(cls, path: str, width: int, height: int, *, file: Path | None) -> TruthImage:
        """The image, with the SHA-256 of ``file`` when the truth's file was found: that
        hash pairs it with a labeled image whatever either folder calls it."""
        content = _content_id(file) if file is not None else None
        return cls(path=path, width=width, height=height, content_id=content)


@dataclass
class GroundTruth:
    """Human labels: images, one row per box (``TRUTH_COLUMNS``; ``truth_image``
    indexes ``images``), the truth's class names, and boxes fixed while reading.

    Classification truth (``kind == "classes"``) has one row per (image, class), its
    box columns NaN, so that images and classes are matched exactly as boxes are."""

    source: str
    images: list[TruthImage]
    boxes: pd.DataFrame
    class_names: list[str]
    clipped: int = 0  # boxes reaching outside their image, clipped to it
    outside: int = 0  # boxes wholly outside their image (or empty), dropped
    kind: str = "boxes"  # or "classes": one row per (image, class), no box
    multi_label: bool = False  # for "classes": the format allows several per image

    @classmethod
    def from_rows(
        cls,
        source: str | Path,
        images: list[TruthImage],
        rows: list[dict],
        class_names: list[str],
        fixes: BoxFixes | None = None,
        *,
        kind: str = "boxes",
        multi_label: bool = False,
    ) -> GroundTruth:
        """What a reader collected, as one table whatever the format it came from."""
        fixes = fixes or BoxFixes()
        return cls(
            source=str(source),
            images=images,
            boxes=pd.DataFrame(rows, columns=TRUTH_COLUMNS),
            class_names=class_names,
            clipped=fixes.clipped,
            outside=fixes.outside,
            kind=kind,
            multi_label=multi_label,
        )


class BoxFixes:
    """Counts of truth boxes clipped to their image or dropped outside it, so the
    evaluation can say how much of the truth was fixed rather than fix it silently."""

    def __init__(self) -> None:
        self.clipped = 0
        self.outside = 0

    def clip(
        self, xyxy: Sequence[float], image: TruthImage
    ) -> tuple[float, float, float, float] | None:
        """The box inside its image; None (and counted) if nothing of it is."""
        x_min, y_min, x_max, y_max = (float(v) for v in xyxy)
        if not all(np.isfinite([x_min, y_min, x_max, y_max])):
            raise ValueError(f"box {list(xyxy)} is not finite")
        clipped = (
            min(max(x_min, 0.0), image.width),
            min(max(y_min, 0.0), image.height),
            min(max(x_max, 0.0), image.width),
            min(max(y_max, 0.0), image.height),
        )
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.outside += 1
            return None
        if clipped != (x_min, y_min, x_max, y_max):
            self.clipped += 1
        return clipped


def _content_id(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def error_reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError):
        return f"missing key {text}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
