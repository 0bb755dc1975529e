"""What labeling costs: credits per image, by task kind or model, and how to show them.

One place for the price list and for credit arithmetic (amounts are float sums, rounded
to ``CREDIT_DECIMALS``), so the ledger, the budget and the reports agree to the digit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from model_loaders.backends import Task, backend_info
from model_loaders.protocol import ModelSpec

# A task; "trained": the rate of the user's own model, whatever its task; "train":
# training a model (``autolabel train``), per image and epoch.
TaskKind = Task | Literal["trained", "train"]
CREDIT_DECIMALS = 9  # credits are summed as floats; 9 decimals hide the binary noise


class CreditRates(BaseModel):
    """Credits per labeled image, per task kind, with optional per-model overrides.

    Defaults: detection 1 credit per 100 images, segmentation 1 per 50, classification
    1 per 200 (single- or multi-label), a trained (your own) model 1 per 500, and
    training 1 per 200 images per epoch (a forward and a backward pass). Loadable
    from YAML or JSON, e.g. ``{detect: 0.01, models: {my/big-model: 0.05}}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    detect: float = Field(0.01, ge=0.0, allow_inf_nan=False)
    segment: float = Field(0.02, ge=0.0, allow_inf_nan=False)
    classify: float = Field(0.005, ge=0.0, allow_inf_nan=False)
    classify_multi: float = Field(
        0.005, ge=0.0, allow_inf_nan=False, alias="classify-multi"
    )
    trained: float = Field(0.002, ge=0.0, allow_inf_nan=False)
    train: float = Field(0.005, ge=0.0, allow_inf_nan=False)
    models: dict[str, Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Per-model rate per image, replacing its task kind's rate.",
    )

    def __hash__(self) -> int:
        return hash((self.model_dump_json(),))

    def rate(self, task: TaskKind, model: str | None = None) -> float:
        """Credits for one image labeled by ``model`` for ``task`` (for ``train``: one
        image in one epoch of training ``model``; per-model rates price labeling
        only)."""
        if model is not None and model in self.models and task != "train":
            return float(self.models[model])
        return float(getattr(self, task.replace("-", "_")))

    @classmethod
    def from_file(cls, path: str | Path) -> CreditRates:
        """Rates from a YAML or JSON file (JSON is YAML); unknown keys are refused."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"credit rates file {path}: expected a mapping of rates")
        return cls.model_validate(data)


def credit_kind(model: ModelSpec) -> TaskKind:
    """The rate a run is charged at: its task, or 'trained' for the user's own model."""
    kind = backend_info(model.backend).credit_kind
    return model.task if kind == "task" else "trained"


def format_credits(value: float) -> str:
    """A credit amount for people: at most 4 decimals, no trailing zeros."""
    text = f"{round(float(value), 4):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def credits_left(max_credits: float, used: float) -> float:
    """What a budget of ``max_credits`` has left after ``used`` (never below 0)."""
    return max(0.0, round(max_credits - used, CREDIT_DECIMALS))
