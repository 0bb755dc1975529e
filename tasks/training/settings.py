"""What a user chose for a training run: one frozen, hashable value that travels from
the command line (or a deployment) to every training task."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TrainDtype = Literal["auto", "float32", "float16", "bfloat16"]


class TrainSettings(BaseModel):
    """How to train: the base, where the result goes, and the loop's numbers.

    Defaults fit a small GPU (8 GB) with an RT-DETR-R18-sized detector at 640 px.
    """

    model_config = ConfigDict(frozen=True)

    base: str = Field(description="Hugging Face id or local folder of the base model.")
    out_model: str = Field(description="The folder the trained model is written to.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    image_size: int | None = Field(
        None,
        ge=32,
        description="Input size in pixels (square for fixed-size processors, longest "
        "edge otherwise); None: the base's processor size.",
    )
    learning_rate: float = Field(1e-4, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0.0, allow_inf_nan=False)
    device: str = "auto"
    dtype: TrainDtype = "auto"
    split: str | None = Field(
        None,
        description="train=F,val=F,test=F; None: the split OUT was exported with "
        "(export_names.parquet), or 10% val when it has none.",
    )
    seed: int = 0
    workers: int = Field(
        0, ge=0, description="Data loader processes (0: decode in the training one)."
    )

    def fingerprint(self, task: str, class_names: list[str]) -> dict:
        """What a checkpoint must agree with to be resumed: everything that shapes the
        weights (not the device, dtype or data loader)."""
        return {
            "base": self.base,
            "task": task,
            "class_names": list(class_names),
            **self.model_dump(
                include={
                    "epochs",
                    "batch_size",
                    "image_size",
                    "learning_rate",
                    "weight_decay",
                    "split",
                    "seed",
                }
            ),
        }
