"""The ``autolabel`` options, declared once in groups that every command composes.

A group is a dataclass whose fields are typer options. A command takes a group as one
parameter (``model: ModelChoices``) and ``@with_groups`` spreads the group's options
into the command's signature for typer, then hands the command the filled-in group. A
new option is added to its group once and every command that labels offers it.

``inherited(Group)`` is the same group with every default left to something else (the
``--from`` preview's value for ``preview``): defaults become None and the help says what
the default would have been.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import typer

from model_loaders.protocol import DEFAULT_PROMPT_TEMPLATE
from tasks.sources import SourceOptions
from tasks.splits import Splits

F = TypeVar("F", bound=Callable[..., Any])

SourceArgument = Annotated[
    str,
    typer.Argument(
        help="Folder of images (searched recursively), s3://bucket/prefix or "
        "roboflow://workspace/project[/batch]."
    ),
]
ClassOption = Annotated[
    list[str] | None,
    typer.Option(
        "--class",
        "-c",
        help='A class: "name" or "name: description; other description". Repeatable.',
    ),
]
OntologyOption = Annotated[
    Path | None,
    typer.Option(
        help="YAML or JSON file: {class name: description(s)}. Adds to --class."
    ),
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        help="0.35 (every class), name=0.5 (one class), or auto: each class at its "
        "F1-optimal threshold on human labels of the preview sample (--truth). "
        "Repeatable."
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="A Hugging Face id or folder; the backend follows the model: Grounding "
        "DINO (default IDEA-Research/grounding-dino-tiny), MM Grounding DINO / LLMDet, "
        "OWLv2 (google/owlv2-base-patch16-ensemble), SAM 3 (facebook/sam3), a "
        "detector or classifier trained on your classes; CLIP: open_clip name "
        "(ViT-B-32), hf-hub: or local-dir:; a torchvision state dict "
        "(--torchvision-arch) or roboflow://WORKSPACE/PROJECT/VERSION."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
ChunkSizeOption = Annotated[int, typer.Option(min=1, help="Images per labeling task.")]
SamCheckpointOption = Annotated[
    str | None,
    typer.Option(
        help="segment: SAM weights (.pth) path or URL (default: official URL)."
    ),
]
SamModelTypeOption = Annotated[
    str, typer.Option(help="segment: SAM architecture: vit_b, vit_l or vit_h.")
]
PretrainedOption = Annotated[
    str | None,
    typer.Option(help="CLIP: open_clip pretrained tag, e.g. laion2b_s34b_b79k."),
]
DatasetOption = Annotated[
    str | None,
    typer.Option(help="Dataset the credits are booked to (default: the source)."),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--credits-ledger",
        help="Credit ledger: an SQLite file (default: OUT/credits.sqlite, or "
        "$AUTOLABEL_CREDITS_LEDGER) or postgresql://user@host:port/db.",
    ),
]
RatesOption = Annotated[
    Path | None,
    typer.Option("--credit-rates", help="YAML/JSON credits per image per task kind."),
]
MaxCreditsOption = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Budget: stop before labeling more once this run would charge more "
        "credits.",
    ),
]
S3EndpointOption = Annotated[
    str | None,
    typer.Option(
        help="Endpoint URL of an S3-compatible store (MinIO, SeaweedFS, ...)."
    ),
]
FpsOption = Annotated[
    float | None,
    typer.Option(min=0.001, help="Label videos too, as frames sampled at this rate."),
]


@dataclasses.dataclass
class SourceChoices:
    """How to reach the source: an S3-compatible endpoint; video frames."""

    s3_endpoint_url: S3EndpointOption = None
    fps: FpsOption = None

    def options(self) -> SourceOptions:
        return SourceOptions(s3_endpoint_url=self.s3_endpoint_url, fps=self.fps)


@dataclasses.dataclass
class ClassChoices:
    """What to label and where to draw the line: classes, thresholds, NMS."""

    classes: ClassOption = None
    ontology: OntologyOption = None
    threshold: ThresholdOption = None
    nms: Annotated[str, typer.Option(help="none, class or agnostic.")] = "class"
    nms_iou: Annotated[
        float, typer.Option(help="IoU above which NMS merges boxes.")
    ] = 0.5

    @property
    def given(self) -> bool:
        """Whether any class was given (``--class`` or ``--ontology``)."""
        return bool(self.classes or self.ontology)


@dataclasses.dataclass
class ModelChoices:
    """Which model labels, and how it runs: the ModelSpec fields."""

    task: Annotated[
        str,
        typer.Option(
            help="detect, segment (Grounded SAM, or SAM 3 with a SAM 3 --model), "
            "classify or classify-multi."
        ),
    ] = "detect"
    model: ModelOption = None
    backend: Annotated[
        str | None,
        typer.Option(
            help="grounding_dino, mm_grounding_dino, owlv2, grounded_sam, sam3, clip, "
            "trained (Hugging Face detector folder), trained_classifier, torchvision "
            "or roboflow; default: from --model (its config.json, or a Hub id's "
            "name), else from --task."
        ),
    ] = None
    device: DeviceOption = "auto"
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = (
        "auto"
    )
    batch_size: BatchSizeOption = 8
    prompt_mode: Annotated[
        str, typer.Option(help="joint (one pass for all classes) or per-class.")
    ] = "joint"
    sam_checkpoint: SamCheckpointOption = None
    sam_model_type: SamModelTypeOption = "vit_h"
    mask_threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="SAM 3: mask probability threshold (default 0.5)."
        ),
    ] = None
    pretrained: PretrainedOption = None
    prompt_template: Annotated[
        str,
        typer.Option(help="CLIP: text prompt around a description; {} is replaced."),
    ] = DEFAULT_PROMPT_TEMPLATE
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="MODEL_CLASS=CLASS: a trained model's class as an ontology class.",
        ),
    ] = None
    torchvision_arch: Annotated[
        str | None,
        typer.Option(
            "--torchvision-arch",
            help="Architecture of a torchvision state dict --model, e.g. "
            "fasterrcnn_resnet50_fpn.",
        ),
    ] = None
    class_names: Annotated[
        Path | None,
        typer.Option(help="torchvision: class names, JSON list or one a line."),
    ] = None

    # The options named otherwise than their ModelSpec field (for messages).
    FLAGS = {"architecture": "--torchvision-arch", "class_map": "--map"}

    def spec_fields(self, dataset: str | None = None) -> dict[str, Any]:
        """The ModelSpec fields these options give (None: not given, so the spec's
        default, which may follow the task, applies). Options are named as their
        fields, but for the three renamed in ``FLAGS`` and the class names file."""
        fields = dataclasses.asdict(self)
        class_map = fields.pop("map_")
        class_names = fields.pop("class_names")
        architecture = fields.pop("torchvision_arch")
        return fields | dict(
            class_map=tuple(class_map) if class_map else None,
            architecture=architecture,
            class_names=str(class_names) if class_names else None,
            dataset=dataset,
        )


@dataclasses.dataclass
class CreditChoices:
    """Who pays: the ledger, the rates, the dataset booked to, a budget."""

    max_credits: MaxCreditsOption = None
    credits_ledger: LedgerOption = None
    credit_rates: RatesOption = None
    dataset: DatasetOption = None


@dataclasses.dataclass
class OutputChoices:
    """How the batch is cut, checked and delivered."""

    chunk_size: ChunkSizeOption = 128
    quality: Annotated[
        str,
        typer.Option(help="warn: report label quality failures; fail: fail the run."),
    ] = "warn"
    upload_to: Annotated[
        str | None,
        typer.Option(
            help="roboflow://WORKSPACE/PROJECT: re-upload images + labels there."
        ),
    ] = None
    split: Annotated[
        str | None,
        typer.Option(
            help="train=0.8,val=0.1,test=0.1: the exports' splits, by image content "
            "(default: all in train, plus a 10% val split for YOLO and class folders)."
        ),
    ] = None

    def splits(self) -> Splits | None:
        """``--split`` parsed (None: the default); raises SplitError."""
        return Splits.parse(self.split) if self.split else None


def inherited(group: type) -> type:
    """``group`` with every default left to the caller: None, said in the help.

    For ``preview``, whose options left out keep the ``--from`` preview's values.
    """
    hints = get_type_hints(group, include_extras=True)
    fields = []
    for field in dataclasses.fields(group):
        hint = hints[field.name]
        if field.default is not None and get_origin(hint) is Annotated:
            base, info = get_args(hint)
            info = copy.copy(info)
            info.help = f"{info.help.rstrip('.')} (default {field.default})."
            hint = Annotated[base | None, info]
        fields.append((field.name, hint, dataclasses.field(default=None)))
    made = dataclasses.make_dataclass(
        f"Inherited{group.__name__}", fields, bases=(group,)
    )
    made.__doc__ = group.__doc__
    return made


def with_groups(command: F) -> F:
    """Let typer see each option-group parameter as the group's own options.

    The wrapper's signature lists the command's plain parameters followed by the
    options of every group parameter (a dataclass); when typer calls it, the options
    are gathered back into their groups.
    """
    hints = get_type_hints(command, include_extras=True)
    signature = inspect.signature(command)
    plain: list[inspect.Parameter] = []
    spread: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for name, parameter in signature.parameters.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            groups[name] = hint
            group_hints = get_type_hints(hint, include_extras=True)
            spread += [
                inspect.Parameter(
                    field.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=field.default,
                    annotation=group_hints[field.name],
                )
                for field in dataclasses.fields(hint)
            ]
        else:
            plain.append(parameter.replace(annotation=hint))
    names = [p.name for p in plain + spread]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise TypeError(f"{command.__name__}: options given twice: {duplicated}")

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        for name, group in groups.items():
            fields = dataclasses.fields(group)
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields})
        return command(**kwargs)

    parameters = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in plain + spread
    ]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
