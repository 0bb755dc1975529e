"""Options and helpers shared by the ``autolabel`` commands.

Every command validates all of its options before anything heavy is loaded, and reports
a problem as one line naming the option, with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from model_loaders.ontology import (
    Ontology,
    OntologyError,
    build_ontology,
    parse_class_option,
)
from model_loaders.protocol import ModelLoadError, ModelSpec
from tasks import progress
from tasks.credits import (
    CreditAccount,
    CreditRates,
    credit_kind,
    resolve_ledger_path,
)
from tasks.settings import LabelSettings
from tasks.thresholds import NmsMode, ThresholdError, parse_threshold_options

EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_BUDGET, EXIT_QUALITY = 1, 2, 3, 4, 5
TASKS = ("detect", "segment", "classify", "classify-multi")
PROMPT_MODES = ("joint", "per-class")
DTYPES = ("auto", "float32", "float16", "bfloat16")

console = Console(stderr=True)


def print_error(error: object) -> None:
    """One line, never wrapped, never marked up: users grep and paste these."""
    console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)


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
    typer.Option(help="0.35 (every class) or name=0.5 (one class). Repeatable."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Grounding DINO: Hugging Face id or folder (default "
        "IDEA-Research/grounding-dino-tiny); CLIP: open_clip name (ViT-B-32), hf-hub: "
        "or local-dir:; your own model: a Hugging Face detector folder (--backend "
        "trained), a torchvision state dict (--torchvision-arch) or "
        "roboflow://WORKSPACE/PROJECT/VERSION."
    ),
]
TaskOption = Annotated[
    str,
    typer.Option(help="detect, segment (Grounded SAM), classify or classify-multi."),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        help="grounding_dino, grounded_sam, clip, trained (Hugging Face detector "
        "folder), torchvision or roboflow; default: from --task and --model."
    ),
]
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
PromptTemplateOption = Annotated[
    str, typer.Option(help="CLIP: text prompt around a description; {} is replaced.")
]
MapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--map", help="MODEL_CLASS=CLASS: a trained model's class as an ontology class."
    ),
]
TorchvisionArchOption = Annotated[
    str | None,
    typer.Option(
        "--torchvision-arch",
        help="Architecture of a torchvision state dict --model, e.g. "
        "fasterrcnn_resnet50_fpn.",
    ),
]
ClassNamesOption = Annotated[
    Path | None,
    typer.Option(help="torchvision: class names, JSON list or one a line."),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
ChunkSizeOption = Annotated[int, typer.Option(min=1, help="Images per labeling task.")]
PromptModeOption = Annotated[
    str, typer.Option(help="joint (one pass for all classes) or per-class.")
]
NmsOption = Annotated[str, typer.Option(help="none, class or agnostic.")]
NmsIouOption = Annotated[float, typer.Option(help="IoU above which NMS merges boxes.")]
MaxCreditsOption = Annotated[
    float | None,
    typer.Option(
        min=0,
        help=(
            "Budget: stop before labeling more once this run would charge more credits."
        ),
    ),
]
LedgerOption = Annotated[
    Path | None,
    typer.Option(
        "--credits-ledger", help="SQLite credit ledger (default: OUT/credits.sqlite)."
    ),
]
RatesOption = Annotated[
    Path | None,
    typer.Option("--credit-rates", help="YAML/JSON credits per image per task kind."),
]
DatasetOption = Annotated[
    str | None,
    typer.Option(help="Dataset the credits are booked to (default: the source)."),
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
UploadToOption = Annotated[
    str | None,
    typer.Option(help="roboflow://WORKSPACE/PROJECT: re-upload images + labels there."),
]
QualityOption = Annotated[
    str, typer.Option(help="warn: report label quality failures; fail: fail the run.")
]


def settings_or_exit(
    *,
    classes: list[str],
    ontology_file: Path | None,
    threshold: list[str],
    nms: str,
    nms_iou: float,
    chunk_size: int,
    model: dict,
) -> LabelSettings:
    """Validate every option before anything heavy is loaded; exit 2 with one clear
    line."""
    try:
        parsed = (
            list(Ontology.from_file(ontology_file).classes) if ontology_file else []
        )
        parsed += [parse_class_option(option) for option in classes]
        ontology = build_ontology(parsed)
        thresholds = parse_threshold_options(threshold)
        thresholds.check_classes(ontology)
        nms_mode: NmsMode = _choice("--nms", nms, ("none", "class", "agnostic"))
        _choice("--prompt-mode", model.get("prompt_mode", "joint"), PROMPT_MODES)
        _choice("--dtype", model.get("dtype", "auto"), DTYPES)
        _choice("--task", model.get("task", "detect"), TASKS)
        given = {key: value for key, value in model.items() if value is not None}
        return LabelSettings(
            ontology=ontology,
            model=ModelSpec(**given),
            thresholds=thresholds,
            nms=nms_mode,
            nms_iou=nms_iou,
            chunk_size=chunk_size,
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else ""
        print_error(f"{where} {first['msg'].removeprefix('Value error, ')}".strip())
        raise typer.Exit(EXIT_USAGE) from None
    except (OntologyError, ThresholdError, ValueError) as error:
        print_error(error)
        raise typer.Exit(EXIT_USAGE) from None


def model_options(
    *,
    task: str | None,
    model: str | None,
    backend: str | None,
    sam_checkpoint: str | None,
    sam_model_type: str | None,
    pretrained: str | None,
    prompt_template: str | None,
    map_: list[str] | None,
    torchvision_arch: str | None,
    class_names: Path | None,
    dataset: str | None = None,
) -> dict:
    """The ModelSpec fields the task, SAM, CLIP and trained-model options give (None:
    not given, so ModelSpec's default, which may depend on the task, applies)."""
    return dict(
        task=task,
        model=model,
        backend=backend,
        sam_checkpoint=sam_checkpoint,
        sam_model_type=sam_model_type,
        pretrained=pretrained,
        prompt_template=prompt_template,
        class_map=tuple(map_) if map_ else None,
        architecture=torchvision_arch,
        class_names=str(class_names) if class_names else None,
        dataset=dataset,
    )


def detection_settings_or_exit(
    classes, ontology, threshold, model, device, dtype, batch_size, chunk_size,
    prompt_mode, nms, nms_iou,
) -> LabelSettings:  # fmt: skip
    """``settings_or_exit`` for commands that take the Grounding DINO options only."""
    return settings_or_exit(
        classes=classes or [],
        ontology_file=ontology,
        threshold=threshold or [],
        nms=nms,
        nms_iou=nms_iou,
        chunk_size=chunk_size,
        model=dict(
            model=model,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            prompt_mode=prompt_mode,
        ),
    )


def credit_account_or_exit(
    *,
    out: Path,
    source: str,
    settings: LabelSettings,
    ledger: Path | None,
    rates: Path | None,
    dataset: str | None,
    max_credits: float | None,
) -> CreditAccount:
    """Who pays for the run: every labeling run is metered (test results never are)."""
    try:
        credit_rates = CreditRates.from_file(rates) if rates else CreditRates()
    except (OSError, ValueError) as error:
        print_error(f"--credit-rates {rates}: {error}")
        raise typer.Exit(EXIT_USAGE) from None
    return CreditAccount(
        ledger_path=str(resolve_ledger_path(out, ledger)),
        dataset=dataset or source,
        model=settings.model.model,
        task=credit_kind(settings.model),
        rates=credit_rates,
        max_credits=max_credits,
    )


def labeled_dataset(*candidates: str | None) -> str | None:
    """The Roboflow project being labeled (for the same-dataset rule of hosted models):
    the first of --dataset, --upload-to and the source that is a roboflow:// URI."""
    return next((c for c in candidates if c and c.startswith("roboflow://")), None)


def quality_or_exit(quality: str) -> str:
    try:
        return _choice("--quality", quality, ("warn", "fail"))
    except ValueError as error:
        print_error(error)
        raise typer.Exit(EXIT_USAGE) from None


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


def warm_model_or_exit(spec: ModelSpec) -> None:
    """Load the model into this process's cache before the flow starts.

    The flow's tasks run in this process and reuse it; a model that cannot be loaded
    fails here with one line instead of a task traceback.
    """
    from model_loaders.cache import get_model

    with console.status(f"Loading {spec.model} ..."):
        try:
            get_model(spec)
        except ModelLoadError as error:
            print_error(error)
            raise typer.Exit(EXIT_FAILED) from None


class _RichListener:
    def __init__(self, bar: Progress, description: str) -> None:
        self.bar = bar
        self.task_id = bar.add_task(description, total=None)

    def expect(self, total: int) -> None:
        self.bar.update(self.task_id, total=total)

    def advance(self, done: int) -> None:
        self.bar.advance(self.task_id, done)


class progress_bar:  # noqa: N801 - used as a context manager, reads like a function
    """A rich progress bar fed by ``tasks.progress`` while the flow runs."""

    def __init__(self, description: str) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeRemainingColumn(),
            console=console,
        )
        self.listener = _RichListener(self.bar, description)

    def __enter__(self) -> Progress:
        self.bar.start()
        progress.add_listener(self.listener)
        return self.bar

    def __exit__(self, *exc_info: object) -> None:
        progress.remove_listener(self.listener)
        self.bar.stop()
