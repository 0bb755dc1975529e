"""Approving thresholds before the batch: the form, its validation, the saved decision.

The flow waits for a Prefect RunInput built here: one number field per class (its
threshold, 0-1, defaulting to the current value), one text field per class (its
descriptions), who approves, and a ``decision`` (approve / revise). ``decision`` has no
default on purpose: Prefect's server validates a resume against the form's JSON schema,
so an empty resume, an unknown class (``additionalProperties: false``), a non-number or
a threshold outside [0, 1] is refused there and the run stays paused.

Once approved, the settings are saved as ``OUT/approved.json`` (``ApprovedSettings``) so
a later run on new images of the same dataset reuses them without asking again.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, create_model

from model_loaders.ontology import (
    Ontology,
    OntologyError,
    ontology_from_data,
    parse_class_option,
)
from tasks.listeners import Listeners
from tasks.settings import LabelSettings, with_runtime
from tasks.thresholds import ThresholdError, Thresholds, parse_threshold_options

Decision = Literal["approve", "revise"]
DECISION_KEY = "decision"
APPROVED_BY_KEY = "approved_by"
_RESERVED = {DECISION_KEY, APPROVED_BY_KEY}
_EXTRA = "autolabel"  # JSON-schema key marking which class and role a field is for


class ApprovalError(ValueError):
    """Approval input or approved settings that cannot be used; says what to fix."""


@dataclass(frozen=True)
class ApprovalDecision:
    """A validated answer to the approval form."""

    decision: Decision
    thresholds: Thresholds
    ontology: Ontology
    approved_by: str
    descriptions_changed: bool

    def apply(self, settings: LabelSettings) -> LabelSettings:
        """``settings`` with the answer's ontology and thresholds."""
        data = settings.model_dump()
        data["ontology"] = self.ontology.model_dump()
        data["thresholds"] = self.thresholds.model_dump()
        return LabelSettings.model_validate(data)


def threshold_key(name: str) -> str:
    """The form key of a class's threshold: its name (unless that is a control key)."""
    return f"{name} (threshold)" if name in _RESERVED else name


def descriptions_key(name: str) -> str:
    """The form key of a class's descriptions."""
    return f"{name} (descriptions)"


def approval_form(
    settings: LabelSettings, *, description: str | None = None
) -> type[BaseModel]:
    """The RunInput class the flow pauses with, for ``settings``' classes.

    Field names are safe identifiers; the keys a resume sends (aliases) are the class
    names, so ``resume_flow_run(id, run_input={"can": 0.45, "decision": "approve"})``
    reads naturally. Defaults are the current thresholds and descriptions; ``decision``
    has none, so it must be given.

    Args:
        settings: The run's current settings (ontology and thresholds).
        description: Markdown shown above the form in the Prefect UI.
    """
    from prefect.input import RunInput

    fields: dict[str, Any] = {}
    for index, ontology_class in enumerate(settings.ontology.classes):
        name = ontology_class.name
        fields[f"threshold_{index}"] = (
            float,
            Field(
                settings.thresholds.for_class(name),
                ge=0.0,
                le=1.0,
                alias=threshold_key(name),
                title=f"{name}: threshold",
                description=f"Label {name!r} where the score is at least this (0-1).",
                json_schema_extra={_EXTRA: {"class": name, "role": "threshold"}},
            ),
        )
    for index, ontology_class in enumerate(settings.ontology.classes):
        name = ontology_class.name
        fields[f"descriptions_{index}"] = (
            str,
            Field(
                "; ".join(ontology_class.descriptions),
                min_length=1,
                alias=descriptions_key(name),
                title=f"{name}: descriptions",
                description="What the model is prompted with, several separated by "
                "';'. A change runs the preview again on the same sample images.",
                json_schema_extra={_EXTRA: {"class": name, "role": "descriptions"}},
            ),
        )
    fields["approved_by"] = (
        str,
        Field("", alias=APPROVED_BY_KEY, title="Approved by (your name)"),
    )
    fields["decision"] = (
        Decision,
        Field(
            alias=DECISION_KEY,
            title="Decision",
            description="approve: label the whole batch with these thresholds. "
            "revise: show the preview again at these thresholds (and descriptions).",
        ),
    )
    model = create_model("ApproveThresholds", __base__=RunInput, **fields)
    if description is not None:
        model._description = description  # what RunInput.with_initial_data sets
    return model


def decide(settings: LabelSettings, answer: BaseModel) -> ApprovalDecision:
    """Turn a loaded form answer into thresholds and an ontology for ``settings``.

    Raises:
        ApprovalError: If the new descriptions do not make a valid ontology (empty,
            or one description given to two classes).
    """
    values = answer.model_dump(by_alias=True)
    ontology = settings.ontology
    per_class = {n: float(values[threshold_key(n)]) for n in ontology.class_names}
    data = {
        name: [part.strip() for part in str(values[descriptions_key(name)]).split(";")]
        for name in ontology.class_names
    }
    for name, parts in data.items():
        if not any(parts):
            raise ApprovalError(f"descriptions of {name!r} are empty")
        data[name] = [part for part in parts if part]
    try:
        revised = ontology_from_data(data)
    except OntologyError as error:
        raise ApprovalError(f"descriptions: {error}") from None
    return ApprovalDecision(
        decision=values[DECISION_KEY],
        thresholds=Thresholds(default=settings.thresholds.default, per_class=per_class),
        ontology=revised,
        approved_by=str(values.get(APPROVED_BY_KEY) or "").strip(),
        descriptions_changed=revised != ontology,
    )


def run_input_from_options(
    schema: dict,
    *,
    thresholds: Sequence[str],
    descriptions: Sequence[str],
    decision: Decision,
    approved_by: str,
) -> dict[str, Any]:
    """The ``run_input`` for ``resume_flow_run`` from ``autolabel approve`` options.

    Checked against the paused run's form (its JSON schema) before anything is sent, so
    a typo is refused here with one line, not by the server.

    Args:
        schema: The JSON schema the paused run saved for its form.
        thresholds: ``0.4`` (every class) or ``name=0.45`` options.
        descriptions: ``"name: description; other"`` options.
        decision: approve, or revise (show the preview again).
        approved_by: Who approves; recorded in approved.json.

    Raises:
        ApprovalError: For an unknown class, a non-number, a threshold outside [0, 1],
            or a form that is not an autolabel approval form.
    """
    keys = _form_keys(schema)
    classes = sorted({name for name, _ in keys})
    run_input: dict[str, Any] = {DECISION_KEY: decision, APPROVED_BY_KEY: approved_by}
    default: float | None = None
    per_class: dict[str, float] = {}
    for option in thresholds:
        try:
            parsed = parse_threshold_options([option])
        except ThresholdError as error:
            raise ApprovalError(str(error)) from None
        if parsed.per_class:
            per_class.update(parsed.per_class)
        else:
            default = parsed.default
    unknown = sorted(set(per_class) - set(classes))
    if unknown:
        raise ApprovalError(
            f"--threshold for unknown class(es) {unknown}; classes are {classes}"
        )
    for name in classes:
        value = per_class.get(name, default)
        if value is not None:
            run_input[keys[(name, "threshold")]] = value
    for option in descriptions:
        try:
            parsed_class = parse_class_option(option)
        except OntologyError as error:
            raise ApprovalError(f"--description {option!r}: {error}") from None
        if ":" not in option:
            raise ApprovalError(
                f"--description {option!r}: write 'class: description; another'"
            )
        if parsed_class.name not in classes:
            raise ApprovalError(
                f"--description for unknown class {parsed_class.name!r}; "
                f"classes are {classes}"
            )
        run_input[keys[(parsed_class.name, "descriptions")]] = "; ".join(
            parsed_class.descriptions
        )
    return run_input


def _form_keys(schema: dict) -> dict[tuple[str, str], str]:
    keys = {}
    for key, prop in (schema.get("properties") or {}).items():
        marker = prop.get(_EXTRA) if isinstance(prop, dict) else None
        if isinstance(marker, dict) and {"class", "role"} <= set(marker):
            keys[(str(marker["class"]), str(marker["role"]))] = key
    if not keys or DECISION_KEY not in (schema.get("properties") or {}):
        raise ApprovalError("this flow run is not waiting for an autolabel approval")
    return keys


def whoami(how: str) -> str:
    """``user@host (how)``: who approved, for approved.json."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} ({how})"


class ThresholdFromTruth(BaseModel):
    """One class's approved threshold measured on the sample's labeled images."""

    threshold: float
    from_truth: bool = Field(
        description="The threshold is the class's F1-optimal one on the labeled "
        "images (--threshold auto, Suggest thresholds, or the same number typed)."
    )
    precision: float | None
    recall: float | None
    f1: float | None
    truth: int = Field(description="Labeled instances of the class.")
    reason: str = Field("", description="Why F1 could not choose a threshold.")


class ApprovedTruth(BaseModel):
    """Which approved thresholds came from the human labels, and what they reached."""

    source: str
    classes: dict[str, ThresholdFromTruth]

    @classmethod
    def from_scores(cls, source: str, scores: dict) -> ApprovedTruth:
        """From ``tasks.preview_truth.TruthScore`` per class, at the approved
        thresholds."""
        return cls(
            source=source,
            classes={
                name: ThresholdFromTruth(
                    threshold=score.threshold,
                    from_truth=score.from_truth and score.threshold == score.suggested,
                    precision=score.precision,
                    recall=score.recall,
                    f1=score.f1,
                    truth=score.truth,
                    reason=score.reason,
                )
                for name, score in scores.items()
            },
        )


class ApprovedSettings(BaseModel):
    """Settings a person approved for a dataset; saved as ``OUT/approved.json``."""

    settings: LabelSettings
    approved_by: str
    approved_at: datetime
    flow_run_id: str | None = None
    sample: list[str] = Field(default_factory=list, description="Preview images.")
    sample_seed: int | None = None
    preview_counts: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="Per class (shown, total) when approved."
    )
    truth: ApprovedTruth | None = Field(
        None, description="The sample's human labels, when the preview had them."
    )


def approved_path(out: str | Path) -> Path:
    """Where a dataset's approved settings live."""
    return Path(out) / "approved.json"


def fetch_approved(
    destination: str, folder: str | Path, endpoint_url: str | None
) -> None:
    """An s3:// output's ``approved.json`` into the run's local folder when the
    bucket's is newer or this machine has none (the preview was approved on another
    machine), so ``--reuse-approved`` works anywhere the bucket can be reached."""
    from tasks.s3 import fetch_output_file, is_s3, s3_client

    if is_s3(destination):
        name = approved_path(folder).name
        fetch_output_file(
            destination, Path(folder), name, client=s3_client(endpoint_url)
        )


def save_approved(out: str | Path, approved: ApprovedSettings) -> Path:
    """Write ``OUT/approved.json`` via a temporary file; returns its path."""
    path = approved_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(approved.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def load_approved(out: str | Path) -> ApprovedSettings:
    """The approved settings saved under ``out``.

    Raises:
        ApprovalError: If none were saved or the file is not valid.
    """
    path = approved_path(out)
    if not path.is_file():
        raise ApprovalError(
            f"no approved settings in {path}: approve a preview first "
            f"(`autolabel run SOURCE --out {out} ...`)"
        )
    try:
        return ApprovedSettings.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as error:
        first = str(error).splitlines()[0]
        raise ApprovalError(f"{path} is not valid approved settings: {first}") from None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ApprovalRequest:
    """What a person needs to approve a paused run (told to the CLI while it waits)."""

    flow_run_id: str
    thresholds: dict[str, float]
    counts: dict[str, tuple[int, int]]
    command: str
    ui_url: str | None
    timeout_s: int


class WaitingListener(Protocol):
    def waiting(self, request: ApprovalRequest) -> None:
        """The run is paused and waits for ``request`` to be answered."""


_waiting: Listeners[WaitingListener] = Listeners()


def add_waiting_listener(listener: WaitingListener) -> None:
    """Be told when a flow in this process starts waiting for approval (the CLI)."""
    _waiting.add(listener)


def remove_waiting_listener(listener: WaitingListener) -> None:
    _waiting.remove(listener)


def notify_waiting(request: ApprovalRequest) -> None:
    for listener in _waiting.current():
        listener.waiting(request)


def approved_settings(
    out: str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> LabelSettings:
    """The dataset's approved settings, run on this worker's device if given (see
    ``tasks.settings.with_runtime``).

    Raises:
        ApprovalError: If ``out`` holds no (valid) approved.json.
    """
    return with_runtime(
        load_approved(out).settings,
        device=device,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )


approved_settings_task = task(
    approved_settings, name="load-approved-settings", cache_policy=NO_CACHE
)
