"""What the quality suite is asked and what it answers, as plain data.

Kept apart from the suite so the report, the policy and the callers that only read a
result (the run report, the CLI) depend on this data alone, not on how it is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

QualityPolicy = Literal["warn", "fail"]
MISSING_ID = "<missing image_id>"
REQUIRED_COLUMNS = (
    "image_id",
    "class_name",
    "class_id",
    "confidence",
    "width",
    "height",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)


class QualityRules(BaseModel):
    """The tunable limits of the checks (the defaults suit Grounding DINO output)."""

    model_config = ConfigDict(frozen=True)

    duplicate_iou: float = Field(
        0.9, gt=0.0, le=1.0, description="IoU above which same-class boxes are twins."
    )
    min_box_px: float = Field(
        1.0, ge=0.0, description="A box narrower or lower than this is empty."
    )
    edge_tolerance_px: float = Field(
        0.0, ge=0.0, description="How far a box may reach past the image border."
    )
    mask_tolerance_px: float = Field(
        1.0, ge=0.0, description="How far a mask may reach past its box."
    )
    require_masks: bool = Field(
        False, description="Every label must have a mask (segmentation runs)."
    )
    max_unlabeled_fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Fail if more readable images have no labels; None: only list.",
    )


@dataclass(frozen=True)
class CheckResult:
    """One check: did it pass, how many rows failed, which images they belong to."""

    name: str
    description: str
    success: bool
    failing_rows: int = 0
    failing_image_ids: list[str] = field(default_factory=list)
    blocking: bool = True  # False: reported, never fails the run
    error: str | None = None  # GX could not evaluate it (counts as a failure)


@dataclass
class QualityResult:
    """Everything the suite found, as plain data (JSON-ready via ``to_dict``)."""

    checks: list[CheckResult]
    labels: int
    images: int
    per_class: dict[str, int]
    unlabeled_image_ids: list[str]
    sources: dict[str, str] = field(default_factory=dict)  # image id -> file, if known

    @property
    def success(self) -> bool:
        return all(check.success for check in self.checks if check.blocking)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.blocking and not c.success]

    def check(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["success"] = self.success
        return data
