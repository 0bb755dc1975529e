"""The settings of a labeling run: what to label, with which model, at which thresholds.

One pydantic model so the same value is a Prefect flow parameter (a form in the Prefect
UI), a JSON file saved beside the outputs (approved settings), and the key that tells a
finished chunk from one labeled with other settings.

Below it, the one place that turns a user's choices (command-line options, the review
page's form, a deployment's parameters) into settings, a credit account, or approved
settings run on another machine. Every rule is here once and raises ``SettingsError``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_loaders.backends import TASKS
from model_loaders.ontology import (
    Ontology,
    OntologyError,
    build_ontology,
    parse_class_option,
)
from model_loaders.protocol import CLASSIFICATION_TASKS, ModelSpec
from tasks.credits import CreditAccount, CreditRates, credit_kind, resolve_ledger_path
from tasks.thresholds import (
    NmsMode,
    ThresholdError,
    Thresholds,
    parse_threshold_options,
)


class LabelSettings(BaseModel):
    """Everything that decides which labels a run produces."""

    model_config = ConfigDict(frozen=True)

    ontology: Ontology
    model: ModelSpec = Field(default_factory=ModelSpec)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    nms: NmsMode = Field("class", description="none, class (per class) or agnostic.")
    nms_iou: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU above which NMS merges."
    )
    chunk_size: int = Field(128, ge=1, description="Images per labeling task.")

    @model_validator(mode="after")
    def _no_nms_between_classes_of_an_image(self) -> LabelSettings:
        """A classification label's box is the whole image, so NMS across classes would
        keep one class per image: classification runs without NMS."""
        if self.model.task in CLASSIFICATION_TASKS and self.nms != "none":
            if self.nms == "agnostic" and "nms" in self.model_fields_set:
                raise ValueError(
                    f"--nms agnostic merges every class of an image for --task "
                    f"{self.model.task}: use --nms none"
                )
            object.__setattr__(self, "nms", "none")
        return self

    def fingerprint(self) -> str:
        """A short hash of what changes labels (not of how they are computed, e.g.
        device)."""
        relevant = self.model_dump(
            exclude={"chunk_size": True, "model": {"device", "batch_size"}}
        )
        text = json.dumps(relevant, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class SettingsError(ValueError):
    """A choice that cannot make settings; the message is one line naming the option.

    The command line turns it into exit code 2, the review page into HTTP 400: one
    exception, so both front ends refuse the same input with the same words.
    """


CHOICES: dict[str, tuple[str, ...]] = {
    "--nms": ("none", "class", "agnostic"),
    "--prompt-mode": ("joint", "per-class"),
    "--dtype": ("auto", "float32", "float16", "bfloat16"),
    "--task": TASKS,
    "--quality": ("warn", "fail"),
}


def choice(option: str, value: str) -> str:
    """``value`` if it is one of ``option``'s choices (see ``CHOICES``).

    Raises:
        SettingsError: Naming the option and its choices.
    """
    allowed = CHOICES[option]
    if value not in allowed:
        raise SettingsError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


def parse_classes(
    options: Sequence[str], ontology_file: Path | None = None
) -> Ontology:
    """The ontology of an ``--ontology`` file followed by ``--class`` options.

    Raises:
        SettingsError: A class, description or file that makes no valid ontology.
    """
    try:
        parsed = (
            list(Ontology.from_file(ontology_file).classes) if ontology_file else []
        )
        parsed += [parse_class_option(option) for option in options]
        return build_ontology(parsed)
    except OntologyError as error:
        raise SettingsError(str(error)) from None


def build_settings(
    *,
    classes: Sequence[str] = (),
    ontology_file: Path | None = None,
    thresholds: Sequence[str] | Thresholds = (),
    nms: str = "class",
    nms_iou: float = 0.5,
    chunk_size: int = 128,
    model: Mapping[str, Any] | None = None,
) -> LabelSettings:
    """A user's choices as ``LabelSettings``, every option checked before any model
    loads.

    Args:
        classes: ``--class`` options ("name: description; other").
        ontology_file: An ``--ontology`` YAML/JSON file, read before ``classes``.
        thresholds: ``--threshold`` options (0.35, name=0.5), or Thresholds.
        nms: none, class or agnostic.
        nms_iou: IoU above which NMS merges boxes.
        chunk_size: Images per labeling task.
        model: ModelSpec fields; None values are left out (the spec's defaults,
            which may follow the task, apply).

    Raises:
        SettingsError: The first invalid choice, naming its option.
    """
    ontology = parse_classes(classes, ontology_file)
    try:
        parsed = (
            thresholds
            if isinstance(thresholds, Thresholds)
            else parse_threshold_options(list(thresholds))
        )
        parsed.check_classes(ontology)
        given = {k: v for k, v in (model or {}).items() if v is not None}
        for option in ("--prompt-mode", "--dtype", "--task"):
            key = option.removeprefix("--").replace("-", "_")
            if key in given:
                choice(option, given[key])
        fields: dict[str, Any] = dict(
            ontology=ontology,
            model=ModelSpec(**given),
            thresholds=parsed,
            nms=choice("--nms", nms),
            nms_iou=nms_iou,
            chunk_size=chunk_size,
        )
        return LabelSettings(**fields)
    except ValidationError as error:
        raise settings_error(error) from None
    except (ThresholdError, ValueError) as error:
        raise SettingsError(str(error)) from None


def settings_error(error: ValidationError) -> SettingsError:
    """The first problem pydantic found, as one line naming the option."""
    first = error.errors()[0]
    loc = [part for part in first["loc"] if part not in ("model", "options")]
    where = "--" + str(loc[-1]).replace("_", "-") if loc else ""
    message = first["msg"].removeprefix("Value error, ")
    return SettingsError(f"{where} {message}".strip())


def with_runtime(
    settings: LabelSettings,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> LabelSettings:
    """``settings`` run on this machine: device, batch and chunk size replaced if
    given.

    These change how labels are computed, not which (they are outside the
    fingerprint): a dataset approved on a laptop can be labeled on a GPU worker.
    """
    data = settings.model_dump()
    if device is not None:
        data["model"]["device"] = device
    if batch_size is not None:
        data["model"]["batch_size"] = batch_size
    if chunk_size is not None:
        data["chunk_size"] = chunk_size
    return LabelSettings.model_validate(data)


def with_every_threshold(
    settings: LabelSettings, chosen: Mapping[str, float] | None = None
) -> LabelSettings:
    """``settings`` with a threshold written out for every class: ``chosen`` where
    given, else the class's current threshold. Approved settings are saved this way,
    so a later change of the default threshold never changes an approved class.

    Raises:
        SettingsError: A chosen class that is not in the ontology, or a threshold
            outside [0, 1].
    """
    names = settings.ontology.class_names
    chosen = dict(chosen or {})
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SettingsError(f"no such class: {', '.join(unknown)}")
    per_class = settings.thresholds.for_classes(names) | chosen
    try:
        thresholds = Thresholds(
            default=settings.thresholds.default, per_class=per_class
        )
    except ValidationError as error:
        raise settings_error(error) from None
    return settings.model_copy(update={"thresholds": thresholds})


def credit_account(
    *,
    out: str | Path,
    source: str,
    settings: LabelSettings,
    ledger: str | Path | None = None,
    rates: CreditRates | Path | None = None,
    dataset: str | None = None,
    max_credits: float | None = None,
) -> CreditAccount:
    """Who pays for a labeling run (test results never are): the ledger
    (``OUT/credits.sqlite`` unless configured), the dataset (default: the source),
    and the model's rate.

    Raises:
        SettingsError: A rates file that cannot be read.
    """
    if rates is None or isinstance(rates, CreditRates):
        credit_rates = rates or CreditRates()
    else:
        try:
            credit_rates = CreditRates.from_file(rates)
        except (OSError, ValueError) as error:
            raise SettingsError(f"--credit-rates {rates}: {error}") from None
    return CreditAccount(
        ledger_path=str(resolve_ledger_path(out, ledger)),
        dataset=dataset or source,
        model=settings.model.model,
        task=credit_kind(settings.model),
        rates=credit_rates,
        max_credits=max_credits,
    )


def labeled_dataset(*candidates: str | None) -> str | None:
    """The Roboflow project being labeled (for the same-dataset rule of hosted
    models): the first candidate (--dataset, --upload-to, the source) that is a
    roboflow:// URI."""
    return next((c for c in candidates if c and c.startswith("roboflow://")), None)


def check_upload_target(
    upload_to: str | None, settings: LabelSettings, out: str
) -> None:
    """Refuse an upload the Roboflow re-upload cannot make, before anything runs.

    Raises:
        SettingsError: A classification run with an upload target.
    """
    if upload_to and settings.model.task in CLASSIFICATION_TASKS:
        raise SettingsError(
            f"--upload-to sends boxes and masks, not --task {settings.model.task} "
            f"labels yet: upload {out}/classification/roboflow/ with the Roboflow "
            "CLI instead"
        )


# ModelSpec fields chosen for one model: a preview with another model drops them.
CHOSEN_FOR_THE_MODEL = {
    "backend",
    "pretrained",
    "architecture",
    "class_names",
    "class_map",
}


def model_over_stored(given: dict, stored: ModelSpec | None) -> dict:
    """The model options given, over the stored preview's where they still fit.

    A new task drops the stored model and everything chosen for it; a new model (or
    torchvision architecture) drops what was chosen for the old model, so that
    ModelSpec picks the backend and defaults for the new one.
    """
    given = {key: value for key, value in given.items() if value is not None}
    if stored is None:
        return given
    base = stored.choices()
    if given.get("task", base["task"]) != base["task"]:
        dropped = {*CHOSEN_FOR_THE_MODEL, "model"}
    elif "model" in given or "architecture" in given:
        dropped = CHOSEN_FOR_THE_MODEL
    else:
        dropped = set()
    return {k: v for k, v in base.items() if k not in dropped} | given
