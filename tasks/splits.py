"""Train/val/test splits: which split each image belongs to, the same in every export.

An image's split follows from its content hash (the label table's ``image_id``) and a
seed, never from the order files were listed or which chunk labeled them: the split is
stable across runs, resumes and machines, and an image added later never moves others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

T = TypeVar("T")
SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")
# Folder names in Roboflow's export layouts (COCO, YOLO, VOC): validation is "valid".
ROBOFLOW_FOLDERS: dict[str, str] = {"train": "train", "val": "valid", "test": "test"}


class SplitError(ValueError):
    """A ``--split`` that cannot be used; the message is one line."""


class Splits(BaseModel):
    """The fraction of images in each split, and the seed of the assignment."""

    model_config = ConfigDict(frozen=True)

    train: float = Field(1.0, ge=0.0, le=1.0)
    val: float = Field(0.0, ge=0.0, le=1.0)
    test: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_add_up(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions add up to {total:g}, not 1")
        if self.train <= 0.0:
            raise ValueError("the train split must hold some images")
        return self

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> Splits:
        """``train=0.8,val=0.1,test=0.1`` (left-out splits are empty).

        Raises:
            SplitError: Unknown names, bad numbers, fractions not adding up to 1.
        """
        fractions: dict[str, float] = {"train": 0.0}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in SPLIT_NAMES:
                raise SplitError(
                    f"--split {text!r}: expected train=F,val=F,test=F (e.g. "
                    "train=0.8,val=0.1,test=0.1)"
                )
            try:
                fractions[name] = float(value)
            except ValueError:
                raise SplitError(
                    f"--split {text!r}: {value!r} is not a number"
                ) from None
        try:
            return cls(**fractions, seed=seed)
        except ValidationError as error:
            first = error.errors()[0]
            where = f"{first['loc'][0]} " if first["loc"] else ""
            message = first["msg"].removeprefix("Value error, ")
            raise SplitError(f"--split {text!r}: {where}{message}") from None

    @property
    def names(self) -> list[SplitName]:
        """The splits that can hold images, in train, val, test order."""
        return [name for name in SPLIT_NAMES if getattr(self, name) > 0.0]

    def split_of(self, image_id: str) -> SplitName:
        """The split of the image whose content hash is ``image_id``."""
        digest = hashlib.sha256(f"{self.seed}:{image_id}".encode()).digest()
        where = int.from_bytes(digest[:8], "big") / 2**64
        if where < self.train:
            return "train"
        return "val" if where < self.train + self.val or self.test == 0.0 else "test"

    def with_val(self, fraction: float = 0.1) -> Splits:
        """These splits, or, when there is no val split, ``fraction`` of train as val:
        for the formats whose readers need one (YOLO's data.yaml, classification
        folders for ultralytics)."""
        if self.val > 0.0:
            return self
        moved = min(fraction, self.train / 2)
        return self.model_copy(update={"train": self.train - moved, "val": moved})

    def group(
        self, items: Iterable[T], image_id: Callable[[T], str]
    ) -> dict[SplitName, list[T]]:
        """``items`` by split, in their order; every split of ``names`` present, even
        when empty (readers expect each folder a data.yaml names)."""
        groups: dict[SplitName, list[T]] = {name: [] for name in self.names}
        for item in items:
            groups.setdefault(self.split_of(image_id(item)), []).append(item)
        return groups
