"""The review page's "Train a model": what the form may ask, where the model goes, and
the trained models the page offers as labelers.

A model trained from the page is a normal ``autolabel train`` model folder at
``OUT/models/<name>`` (``--model OUT/models/<name>`` labels with it anywhere). The name
is the user's, or made from the base's last path part (``rtdetr_v2_r18vd``, then
``rtdetr_v2_r18vd-2``, ... when another training has it); training again with the same
settings (under the same name, or with none) resumes an interrupted run or finds it
done, as the command line does.
Before anything runs, the same checks as ``autolabel train`` (the labels, the base's
kind, the folder) refuse a bad choice with their one-line reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from tasks.credits import format_credits
from tasks.training.data import read_training_data
from tasks.training.model_folder import (
    TRAINED_MODELS_FOLDER,
    trained_model_summary,
    trained_models,
)
from tasks.training.preflight import check_training_fits
from tasks.training.settings import TrainSettings
from tasks.training.state import TrainingStateError, training_state

_DEFAULTS = TrainSettings.model_fields
# One folder name: a letter or digit first, then letters, digits, '.', '-', '_'.
_NAME = re.compile(r"\w[\w.-]{0,79}")


class TrainRequestError(ValueError):
    """A training the page must correct (no base, a bad name or number); one line."""


class TrainRequest(BaseModel):
    """'Train a model': the base, the model's name and the loop's numbers; empty
    fields take ``autolabel train``'s defaults."""

    base: str = ""
    name: str = ""
    epochs: int = _DEFAULTS["epochs"].default
    batch_size: int = _DEFAULTS["batch_size"].default
    image_size: int | None = _DEFAULTS["image_size"].default
    split: str | None = Field(None, description="train=F,val=F; empty: as exported.")


def models_folder(out: str | Path) -> Path:
    """Where the page's trained models live: ``OUT/models``."""
    return Path(out) / TRAINED_MODELS_FOLDER


def offered_models(out: str | Path) -> list[dict[str, Any]]:
    """The finished models under ``OUT/models`` (see ``trained_models``)."""
    return trained_models(models_folder(out))


def training_form_defaults() -> dict[str, Any]:
    """What the form starts with: ``autolabel train``'s defaults (no default base)."""
    return TrainRequest().model_dump(
        include={"base", "epochs", "batch_size", "image_size"}
    )


def check_model_name(name: str) -> str:
    """``name`` as one folder under ``OUT/models``; no path separators or '..'.

    Raises:
        TrainRequestError: Any other name.
    """
    if ".." in name or not _NAME.fullmatch(name):
        raise TrainRequestError(
            f"model name {name!r}: use letters, digits, '.', '-' and '_' only (one "
            "folder under OUT/models: no path separators or '..')"
        )
    return name


def default_model_name(out: str | Path, base: str, fingerprint: dict) -> str:
    """The base's last path part as a folder name: the folder of this same training
    when there is one (so training again resumes it), else the first one no other
    training holds, numbered."""
    last = re.split(r"[\\/]", base.strip().rstrip("\\/"))[-1]
    stem = re.sub(r"[^\w.-]+", "-", last).strip(".-")[:60] or "model"
    stem = re.sub(r"\.{2,}", ".", stem)
    name, number = stem, 1
    while True:
        try:
            training_state(models_folder(out) / name, fingerprint)
            return name
        except TrainingStateError:  # another training's folder
            number += 1
            name = f"{stem}-{number}"


def plan_training(
    out: str | Path, request: TrainRequest, *, device: str
) -> TrainSettings:
    """The request as training settings, after ``autolabel train``'s checks: the
    labels can be trained on, the base is of their kind, the folder is free (or this
    same training). Reads the base's config only; writes nothing.

    Raises:
        TrainRequestError: No base, a bad name or number.
        TrainingDataError, BaseModelError, TrainingStateError, ModelLoadError: As
            ``autolabel train`` refuses them.
    """
    base = request.base.strip()
    if not base:
        raise TrainRequestError(
            "base model: required: a Hugging Face id of a detector (e.g. "
            "PekingU/rtdetr_v2_r18vd) or classifier, or a model folder"
        )
    name = request.name.strip()
    if name:
        check_model_name(name)
    try:
        settings = TrainSettings(
            base=base,
            out_model=str(models_folder(out) / (name or "unnamed")),
            epochs=request.epochs,
            batch_size=request.batch_size,
            image_size=request.image_size,
            device=device,
            split=(request.split or "").strip() or None,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]).replace("_", " ")
        raise TrainRequestError(f"{field}: {first['msg']}") from None
    data = read_training_data(out, settings.split)
    if not name:
        fingerprint = settings.fingerprint(data.task, data.class_names)
        folder = models_folder(out) / default_model_name(out, base, fingerprint)
        settings = settings.model_copy(update={"out_model": str(folder)})
    check_training_fits(settings, data)
    return settings


def training_result(summary: Any) -> dict[str, Any]:
    """What the page shows of a finished ``train_detector`` run (its
    ``TrainingSummary``): the model as the selector lists it, and what was done."""
    history = summary.history
    return {
        "model": trained_model_summary(summary.out_model) if summary.written else None,
        "name": Path(summary.out_model).name,
        "already_trained": summary.plan.finished,
        "epochs": summary.epochs,
        "trained_now": summary.trained_now,
        "last": history[-1] if history else None,
        "credits_used": summary.credits_used,
        "credits_text": format_credits(summary.credits_used or 0.0),
        "budget_stop": summary.budget_stop,
    }
