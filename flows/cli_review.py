"""``autolabel preview``, ``run`` and ``approve``: test results, approval, the batch.

Exit codes (as ``autolabel label``, plus 6): 0 done; 1 a source, model or Prefect server
could not be used; 2 invalid options (ontology, thresholds, approval input); 3 done, but
some images were skipped; 4 stopped by the credit budget; 5 quality checks failed with
--quality fail; 6 the run ended without approval (timed out or cancelled): nothing
labeled, nothing charged.

``preview --from OUT`` re-filters the stored candidates: it never imports torch or loads
a model, so a threshold change is answered at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.table import Table

from flows.cli_options import (
    EXIT_FAILED,
    EXIT_QUALITY,
    EXIT_USAGE,
    BackendOption,
    BatchSizeOption,
    ChunkSizeOption,
    ClassNamesOption,
    ClassOption,
    DatasetOption,
    DeviceOption,
    DtypeOption,
    FpsOption,
    LedgerOption,
    MapOption,
    MaxCreditsOption,
    ModelOption,
    NmsIouOption,
    NmsOption,
    OntologyOption,
    PretrainedOption,
    PromptModeOption,
    PromptTemplateOption,
    QualityOption,
    RatesOption,
    S3EndpointOption,
    SamCheckpointOption,
    SamModelTypeOption,
    TaskOption,
    ThresholdOption,
    TorchvisionArchOption,
    console,
    credit_account_or_exit,
    labeled_dataset,
    model_options,
    print_error,
    progress_bar,
    quality_or_exit,
    settings_or_exit,
    warm_model_or_exit,
)
from model_loaders.protocol import DEFAULT_GROUNDING_DINO, ModelSpec
from tasks.images import SourceError
from tasks.preview import DEFAULT_SAMPLE_SIZE, PreviewError
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions, canonical_source
from tasks.thresholds import ThresholdError, Thresholds, parse_threshold_options

EXIT_NOT_APPROVED = 6

SourceArgument = Annotated[
    str,
    typer.Argument(
        help="Folder of images (searched recursively), s3://bucket/prefix or "
        "roboflow://workspace/project[/batch]."
    ),
]
OutOption = Annotated[Path, typer.Option(help="Output folder.")]
SampleOption = Annotated[
    int, typer.Option("--sample", min=1, help="Images in the random preview sample.")
]
SeedOption = Annotated[
    int, typer.Option(help="Seed of the sample: the same seed gives the same images.")
]
ImagesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--images", help="Preview these images instead: a.jpg,b/c.jpg (relative)."
    ),
]


def preview(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Folder of images, s3://bucket/prefix or roboflow://workspace/"
            "project[/batch]; leave out with --from."
        ),
    ] = None,
    out: OutOption = Path("out"),
    from_: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Output folder of an earlier preview: show it at new thresholds "
            "(no model), or re-run its sample images with new --class descriptions.",
        ),
    ] = None,
    classes: ClassOption = None,
    ontology: OntologyOption = None,
    threshold: ThresholdOption = None,
    sample: SampleOption = DEFAULT_SAMPLE_SIZE,
    seed: SeedOption = 0,
    images: ImagesOption = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="detect (default), segment, classify or classify-multi (default: "
            "the --from preview's)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face model id or local directory (default: the --from "
            f"preview's, else the task's: {DEFAULT_GROUNDING_DINO} to detect)."
        ),
    ] = None,
    backend: BackendOption = None,
    device: Annotated[
        str | None, typer.Option(help="auto (default), cpu, cuda, cuda:N or mps.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto (default), float32, float16, bfloat16.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Images per forward pass (default 8).")
    ] = None,
    prompt_mode: Annotated[
        str | None, typer.Option(help="joint (default) or per-class.")
    ] = None,
    nms: Annotated[
        str | None, typer.Option(help="none, class (default) or agnostic.")
    ] = None,
    nms_iou: Annotated[
        float | None, typer.Option(help="IoU above which NMS merges (default 0.5).")
    ] = None,
    s3_endpoint_url: S3EndpointOption = None,
    fps: FpsOption = None,
    sam_checkpoint: SamCheckpointOption = None,
    sam_model_type: Annotated[
        str | None,
        typer.Option(help="segment: SAM architecture: vit_b, vit_l or vit_h (vit_h)."),
    ] = None,
    pretrained: PretrainedOption = None,
    prompt_template: Annotated[
        str | None,
        typer.Option(help="CLIP: '{}' is replaced by the description."),
    ] = None,
    map_: MapOption = None,
    torchvision_arch: TorchvisionArchOption = None,
    class_names: ClassNamesOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Test results on a sample (0 credits): every candidate kept with its score.

    Writes OUT/preview/: annotated images, candidates.parquet, summary.md with
    (shown)/(total) per class. Options left out keep the --from preview's values.
    """
    what = model_options(
        task=task,
        model=model,
        backend=backend,
        sam_checkpoint=sam_checkpoint,
        sam_model_type=sam_model_type,
        pretrained=pretrained,
        prompt_template=prompt_template,
        map_=map_,
        torchvision_arch=torchvision_arch,
        class_names=class_names,
        dataset=dataset,
    ) | dict(prompt_mode=prompt_mode)  # these change the candidates
    how = dict(device=device, dtype=dtype, batch_size=batch_size)
    stored = None
    if from_ is not None:
        if source is not None:
            _usage("give SOURCE or --from OUT, not both")
        if not (classes or ontology):
            changed = [_FLAGS.get(k, k) for k, v in what.items() if v is not None]
            changed += ["fps"] if fps is not None else []
            if changed:
                _usage(
                    "--from OUT without --class only re-filters the stored "
                    "candidates: give --class (or --ontology) to run the model again "
                    f"with --{', --'.join(f.replace('_', '-') for f in changed)}"
                )
            _refilter(from_, threshold or [], nms, nms_iou)
            return
        if images:
            _usage("--from re-runs the stored sample: drop --images")
        stored = _stored_record(from_)
        source, out, images = stored.source, from_, list(stored.sample)
    if source is None:
        _usage("missing SOURCE (a folder of images), or --from OUT")
    what["dataset"] = labeled_dataset(dataset, source)
    fields = LabelSettings.model_fields
    settings = settings_or_exit(
        classes=classes or [],
        ontology_file=ontology,
        threshold=threshold or [],
        nms=nms or (stored.settings.nms if stored else fields["nms"].default),
        nms_iou=nms_iou if nms_iou is not None
        else (stored.settings.nms_iou if stored else fields["nms_iou"].default),
        chunk_size=fields["chunk_size"].default,
        model=_over_stored(what | how, stored.settings.model if stored else None),
    )  # fmt: skip
    if stored:
        settings = _keep_stored_thresholds(settings, stored.settings, threshold or [])
    picked = _split_images(images)
    kept = stored.sources if stored else SourceOptions()
    sources = SourceOptions(
        s3_endpoint_url=s3_endpoint_url or kept.s3_endpoint_url, fps=fps or kept.fps
    )
    _check_sample(source, out, sources, sample, seed, picked)
    warm_model_or_exit(settings.model)

    from flows.preview import preview as preview_flow

    with console.status("Running the preview on the sample ..."):
        summary = preview_flow(
            source=source,
            out=str(out),
            settings=settings,
            sample_size=sample,
            seed=seed,
            images=picked,
            sources=sources,
        )
    print_preview(summary)


def run(
    source: SourceArgument,
    out: OutOption = Path("out"),
    classes: ClassOption = None,
    ontology: OntologyOption = None,
    threshold: ThresholdOption = None,
    sample: SampleOption = DEFAULT_SAMPLE_SIZE,
    seed: SeedOption = 0,
    images: ImagesOption = None,
    approve: Annotated[
        bool,
        typer.Option(
            "--approve", help="Take the given thresholds as approved; do not wait."
        ),
    ] = False,
    reuse_approved: Annotated[
        bool,
        typer.Option(
            "--reuse-approved",
            help="Label with OUT/approved.json; no preview, no waiting.",
        ),
    ] = False,
    timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to wait for approval.")
    ] = 3600,
    task: TaskOption = "detect",
    model: ModelOption = None,
    backend: BackendOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    batch_size: BatchSizeOption = 8,
    chunk_size: ChunkSizeOption = 128,
    prompt_mode: PromptModeOption = "joint",
    nms: NmsOption = "class",
    nms_iou: NmsIouOption = 0.5,
    max_credits: MaxCreditsOption = None,
    credits_ledger: LedgerOption = None,
    credit_rates: RatesOption = None,
    dataset: DatasetOption = None,
    quality: QualityOption = "warn",
    s3_endpoint_url: S3EndpointOption = None,
    fps: FpsOption = None,
    sam_checkpoint: SamCheckpointOption = None,
    sam_model_type: SamModelTypeOption = "vit_h",
    pretrained: PretrainedOption = None,
    prompt_template: PromptTemplateOption = "a photo of a {}",
    map_: MapOption = None,
    torchvision_arch: TorchvisionArchOption = None,
    class_names: ClassNamesOption = None,
) -> None:
    """Preview a sample, wait for approval of the thresholds, then label everything.

    While it waits it prints the flow run id and the `autolabel approve` command to
    type in another shell (or resume the run in the Prefect UI).
    """
    sources = SourceOptions(s3_endpoint_url=s3_endpoint_url, fps=fps)
    if reuse_approved:
        if classes or ontology or threshold:
            _usage(
                "--reuse-approved labels with the classes and thresholds of "
                f"{out}/approved.json: drop --class/--ontology/--threshold"
            )
        settings = _approved_settings(out, device, batch_size, chunk_size)
    else:
        settings = settings_or_exit(
            classes=classes or [],
            ontology_file=ontology,
            threshold=threshold or [],
            nms=nms,
            nms_iou=nms_iou,
            chunk_size=chunk_size,
            model=dict(
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                prompt_mode=prompt_mode,
                **model_options(
                    task=task,
                    model=model,
                    backend=backend,
                    sam_checkpoint=sam_checkpoint,
                    sam_model_type=sam_model_type,
                    pretrained=pretrained,
                    prompt_template=prompt_template,
                    map_=map_,
                    torchvision_arch=torchvision_arch,
                    class_names=class_names,
                    dataset=labeled_dataset(dataset, source),
                ),
            ),
        )
        _check_sample(source, out, sources, sample, seed, _split_images(images))
    quality = quality_or_exit(quality)
    account = credit_account_or_exit(
        out=out,
        source=canonical_source(source),
        settings=settings,
        ledger=credits_ledger,
        rates=credit_rates,
        dataset=dataset,
        max_credits=max_credits,
    )
    warm_model_or_exit(settings.model)

    from flows.autolabel import autolabel
    from tasks import approval

    listener = _WaitingPrinter()
    approval.add_waiting_listener(listener)
    batch = _BatchProgress()
    try:
        state = autolabel(
            source=source,
            out=str(out),
            settings=settings,
            sources=sources,
            sample_size=sample,
            seed=seed,
            images=_split_images(images),
            approve=approve,
            reuse_approved=reuse_approved,
            approval_timeout=timeout,
            credits=account,
            quality=quality,
            return_state=True,
        )
    except KeyboardInterrupt:
        console.print(
            f"Stopped: nothing more labeled; the preview stays in {out}/preview."
        )
        raise typer.Exit(130) from None
    finally:
        batch.close()
        approval.remove_waiting_listener(listener)
    _finish(state, out, approved_here=approve)


def approve(
    run_id: Annotated[str, typer.Argument(help="The flow run id `run` printed.")],
    threshold: ThresholdOption = None,
    description: Annotated[
        list[str] | None,
        typer.Option(
            help='New descriptions: "name: description; other". Re-runs the preview '
            "on the same sample and waits again. Repeatable."
        ),
    ] = None,
    revise: Annotated[
        bool,
        typer.Option(
            "--revise", help="Show the preview at these thresholds; do not label yet."
        ),
    ] = False,
    approved_by: Annotated[
        str | None, typer.Option(help="Your name, recorded in approved.json.")
    ] = None,
) -> None:
    """Approve a waiting run's thresholds (the others keep their current value)."""
    from tasks.approval import ApprovalError, run_input_from_options, whoami

    for option in threshold or []:
        try:
            parse_threshold_options([option])
        except ThresholdError as error:
            _usage(str(error))
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        _usage(f"{run_id!r} is not a flow run id (a UUID, as `autolabel run` printed)")
    schema = _paused_form(flow_run_id)
    decision = "revise" if revise or description else "approve"
    try:
        run_input = run_input_from_options(
            schema,
            thresholds=threshold or [],
            descriptions=description or [],
            decision=decision,
            approved_by=approved_by or whoami("autolabel approve"),
        )
    except ApprovalError as error:
        _usage(str(error))

    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(flow_run_id, run_input=run_input)
    except FlowPauseTimeout:
        _fail(f"run {run_id} waited too long: it can no longer be resumed")
    except RuntimeError as error:  # the server refused the input; still paused
        _usage(str(error).removeprefix("Cannot resume this run: "))
    console.print(
        f"Sent to run {run_id}: {decision}"
        + (" (the batch starts now)" if decision == "approve" else "")
    )


def print_preview(summary) -> None:
    """The per-class table and where the preview's files are."""
    drawn = f"seed {summary.seed}" if summary.seed is not None else "picked"
    console.print(
        f"Test results on {len(summary.sample)} sample images ({drawn}): model run "
        f"once at a floor of {summary.floor:g}, {summary.candidates} candidates. "
        f"Cost: {summary.credits} credits (test results are free)."
    )
    table = Table("class", "threshold", "shown/total")
    for name, (shown, total) in summary.counts.items():
        table.add_row(name, f"{summary.thresholds[name]:g}", f"{shown}/{total}")
    console.print(table)
    root = Path(summary.out) / "preview"
    console.print(
        f"Annotated images: {root / 'images'}/ ({len(summary.images)}); candidates: "
        f"{root / 'candidates.parquet'}; summary: {root / 'summary.md'}"
    )
    for path, reason in summary.skipped:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    if summary.below_floor:
        console.print(
            f"[yellow]below the floor {summary.floor:g}:[/yellow] "
            f"{', '.join(summary.below_floor)}: counts may be too low; run the "
            "preview on SOURCE again to see candidates under the floor"
        )


def _refilter(
    out: Path, options: list[str], nms: str | None, nms_iou: float | None
) -> None:
    from tasks.preview import load_record
    from tasks.preview_report import show_preview

    try:
        stored = load_record(out).settings
        thresholds = merge_thresholds(stored.thresholds, options)
        if nms is not None and nms not in ("none", "class", "agnostic"):
            raise ValueError(f"--nms {nms!r}: choose one of none, class, agnostic")
        summary = show_preview(str(out), thresholds, nms=nms, nms_iou=nms_iou)
    except (PreviewError, ThresholdError, ValueError) as error:
        _usage(str(error))
    print_preview(summary)


def merge_thresholds(stored: Thresholds, options: list[str]) -> Thresholds:
    """``stored`` with the given options on top.

    A bare ``--threshold 0.5`` means every class (it replaces the default and the stored
    per-class values); ``name=0.6`` then sets one class, in any order.
    """
    bare = [parse_threshold_options([o]) for o in options if "=" not in o]
    named = [parse_threshold_options([o]) for o in options if "=" in o]
    default = bare[-1].default if bare else stored.default
    per_class = {} if bare else dict(stored.per_class)
    for parsed in named:
        per_class.update(parsed.per_class)
    return Thresholds(default=default, per_class=per_class)


def _stored_record(from_: Path):
    from tasks.preview import load_record

    try:
        return load_record(from_)
    except PreviewError as error:
        _usage(str(error))


def _keep_stored_thresholds(
    settings: LabelSettings, stored: LabelSettings, options: list[str]
) -> LabelSettings:
    """New descriptions keep the thresholds last shown, for the classes still there."""
    names = set(settings.ontology.class_names)
    kept = stored.thresholds.model_copy(
        update={
            "per_class": {
                name: value
                for name, value in stored.thresholds.per_class.items()
                if name in names
            }
        }
    )
    data = settings.model_dump()
    data["thresholds"] = merge_thresholds(kept, options).model_dump()
    return LabelSettings.model_validate(data)


def _approved_settings(
    out: Path, device: str, batch_size: int, chunk_size: int
) -> LabelSettings:
    from tasks.approval import ApprovalError, load_approved

    try:
        approved = load_approved(out)
    except ApprovalError as error:
        _usage(str(error))
    data = approved.settings.model_dump()
    data["model"].update(device=device, batch_size=batch_size)
    data["chunk_size"] = chunk_size
    console.print(
        f"Reusing the settings {approved.approved_by} approved on "
        f"{approved.approved_at:%Y-%m-%d %H:%M} UTC ({out / 'approved.json'})."
    )
    return LabelSettings.model_validate(data)


def _split_images(images: list[str] | None) -> list[str] | None:
    names = [name.strip() for option in images or [] for name in option.split(",")]
    return [name for name in names if name] or None


# The options of ModelSpec fields named otherwise (for messages).
_FLAGS = {"architecture": "torchvision_arch", "class_map": "map"}

# ModelSpec fields chosen for one model: a preview with another model drops them.
_CHOSEN_FOR_THE_MODEL = {
    "backend",
    "pretrained",
    "architecture",
    "class_names",
    "class_map",
}


def _over_stored(given: dict, stored: ModelSpec | None) -> dict:
    """The model options given, over the stored preview's where they still fit.

    A new task drops the stored model and everything chosen for it; a new model (or
    torchvision architecture) drops what was chosen for the old model, so that
    ModelSpec picks the backend and defaults for the new one.
    """
    given = {key: value for key, value in given.items() if value is not None}
    if stored is None:
        return given
    base = stored.model_dump()
    if given.get("task", base["task"]) != base["task"]:
        dropped = {*_CHOSEN_FOR_THE_MODEL, "model"}
    elif "model" in given or "architecture" in given:
        dropped = _CHOSEN_FOR_THE_MODEL
    else:
        dropped = set()
    return {k: v for k, v in base.items() if k not in dropped} | given


def _check_sample(
    source: str,
    out: Path,
    sources: SourceOptions,
    size: int,
    seed: int,
    images: list[str] | None,
) -> None:
    """Refuse a bad source or --images before a model is loaded."""
    from tasks.preview import plan_sample

    try:
        plan_sample(
            source, str(out), size=size, seed=seed, images=images, options=sources
        )
    except SourceError as error:
        _fail(str(error))
    except PreviewError as error:
        _usage(str(error))


def _paused_form(flow_run_id: UUID) -> dict:
    """The approval form (JSON schema) the paused run waits for."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.input.actions import read_flow_run_input

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        _fail(f"no flow run {flow_run_id} on this Prefect server (PREFECT_API_URL?)")
    except Exception as error:  # noqa: BLE001 - connection errors of every kind
        _fail(f"cannot reach the Prefect server: {type(error).__name__}: {error}")
    state = run.state
    keyset = state.state_details.run_input_keyset if state else None
    if state is None or not state.is_paused() or not keyset:
        name = state.name if state else "no state"
        _fail(f"run {flow_run_id} is not waiting for approval (it is {name})")
    schema = read_flow_run_input(keyset["schema"], flow_run_id=flow_run_id)
    if not isinstance(schema, dict):
        _fail(f"run {flow_run_id} has no approval form")
    return schema


def _finish(state, out: Path, *, approved_here: bool) -> None:
    """Print how the run ended, and exit with the code that says so."""
    from flows.cli import report_run
    from tasks.approval import load_approved
    from tasks.quality import QualityCheckFailed
    from tasks.report import RunSummary

    if state.is_cancelled():
        console.print(f"Not approved: {state.message}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NOT_APPROVED)
    result = state.result(raise_on_failure=False)
    if isinstance(result, QualityCheckFailed):
        print_error(result)
        raise typer.Exit(EXIT_QUALITY)
    if not state.is_completed() or not isinstance(result, RunSummary):
        _fail(str(result if isinstance(result, BaseException) else state.message))
    if approved_here:
        counts = load_approved(out).preview_counts
        console.print(
            "Test results on the sample (0 credits) at the approved thresholds: "
            + ", ".join(f"{k} {shown}/{total}" for k, (shown, total) in counts.items())
        )
    console.print(f"Approved settings: {out / 'approved.json'}.", soft_wrap=True)
    raise typer.Exit(report_run(result, str(out)))


def _usage(message: str):
    print_error(message)
    raise typer.Exit(EXIT_USAGE)


def _fail(message: str):
    print_error(message)
    raise typer.Exit(EXIT_FAILED)


class _WaitingPrinter:
    """Prints what to type while the flow waits for approval."""

    def waiting(self, request) -> None:
        table = Table("class", "threshold", "shown/total")
        for name, (shown, total) in request.counts.items():
            threshold = request.thresholds.get(name, 0.0)
            table.add_row(name, f"{threshold:g}", f"{shown}/{total}")
        console.print(
            f"Preview ready (0 credits). Run {request.flow_run_id} waits for approval "
            f"(up to {request.timeout_s} s):"
        )
        console.print(table)
        console.print("Approve from another shell (change the numbers as you like):")
        console.print(
            f"  {request.command}", markup=False, highlight=False, soft_wrap=True
        )
        if request.ui_url:
            console.print(
                f"or resume it in the Prefect UI: {request.ui_url}", soft_wrap=True
            )


class _BatchProgress:
    """A progress bar that appears only when the batch starts (not while waiting)."""

    def __init__(self) -> None:
        from tasks import progress

        self._bar: progress_bar | None = None
        progress.add_listener(self)

    def expect(self, total: int) -> None:
        if self._bar is None:
            self._bar = progress_bar("Labeling")
            self._bar.__enter__()
            self._bar.listener.expect(total)  # it missed this call

    def advance(self, done: int) -> None:
        pass  # the bar's own listener counts

    def close(self) -> None:
        from tasks import progress

        progress.remove_listener(self)
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
