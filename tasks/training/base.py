"""What kind of model a base is, read from its config alone (no weights loaded): a
detector (an ``AutoModelForObjectDetection`` architecture) or an image classifier
(``AutoModelForImageClassification``); anything else cannot be trained here."""

from __future__ import annotations

from typing import Literal

from model_loaders.hub import check_model_reachable
from model_loaders.protocol import ModelLoadError

BaseKind = Literal["detect", "classify"]


class BaseModelError(ValueError):
    """A base that is neither a detector nor an image classifier, or does not fit the
    output folder's task; one line."""


def base_kind(base: str) -> BaseKind:
    """``detect`` or ``classify``, from the base's ``config.json``.

    Raises:
        ModelLoadError: The base cannot be found or its config cannot be read.
        BaseModelError: It is neither kind of model.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
    )

    check_model_reachable(base, what="base model")
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=False)
    except Exception as error:  # OSError, ValueError (unknown model type), ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"--base {base}: cannot read its config: {type(error).__name__}: "
            f"{detail or 'no details'}"
        ) from error
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        return "detect"
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "classify"
    raise BaseModelError(
        f"--base {base}: a {model_type or 'model of unknown type'} is neither an "
        "object detector (RT-DETR, D-FINE, DETR, ...) nor an image classifier"
    )


def check_base_fits(base: str, kind: BaseKind, task: str, where: str) -> None:
    """Refuse a detector base for classification labels, and the other way round.

    Raises:
        BaseModelError: Naming both.
    """
    if kind != task:
        wanted = "an image classifier" if task == "classify" else "an object detector"
        have = "an object detector" if kind == "detect" else "an image classifier"
        raise BaseModelError(
            f"{where}: the labels are for --task {task}, which needs {wanted} as "
            f"--base; {base} is {have}"
        )
