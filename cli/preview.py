"""``autolabel preview``: test results on a sample (0 credits), and ``--from`` to see
them again at new thresholds without a model.

``preview --from OUT`` without ``--class`` re-filters the stored candidates: it never
imports torch or loads a model, so a threshold change is answered at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    ClassChoices,
    DatasetOption,
    ModelChoices,
    SourceChoices,
    inherited,
    with_groups,
)
from cli.output import (
    EXIT_FAILED,
    EXIT_SKIPPED,
    EXIT_USAGE,
    console,
    exit_on,
    shown,
    usage,
)
from cli.settings import out_lock_or_exit, preflight_or_exit, warm_model_or_exit
from model_loaders.model_family import ModelLoadError
from tasks.images import SourceError
from tasks.preview import DEFAULT_SAMPLE_SIZE, PreviewError
from tasks.settings import (
    LabelSettings,
    SettingsError,
    build_settings,
    choice,
    labeled_dataset,
    model_over_stored,
)
from tasks.sources import SourceOptions
from tasks.thresholds import ThresholdError, Thresholds, parse_threshold_options


def _local_out(value: str | Path) -> Path:
    """A preview's --out is a local folder: an s3:// one is refused by name (as a
    Path it would silently become a folder called 's3:'). Typer passes the default
    through here too, as a Path."""
    if str(value).startswith("s3://"):
        raise typer.BadParameter(
            f"{value}: the preview writes a local folder; `autolabel run --out "
            "s3://...` keeps the preview in the bucket with the batch"
        )
    return Path(value)


OutOption = Annotated[
    Path,
    typer.Option(help="Output folder (local).", parser=_local_out, metavar="PATH"),
]
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

TruthOption = Annotated[
    str | None,
    typer.Option(
        help="Human labels of (some of) the sample images: a COCO JSON file (or a "
        "folder of them) or a YOLO folder with data.yaml. Shows each class's "
        "precision/recall/F1 and its F1-optimal threshold; --threshold auto uses it."
    ),
]
TruthMapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--truth-map",
        help="THEIR_CLASS=OUR_CLASS: a --truth class named otherwise. Repeatable.",
    ),
]
AUTO = "auto"

# Options left out of ``preview`` keep the --from preview's values.
PreviewClassChoices = inherited(ClassChoices)
PreviewModelChoices = inherited(ModelChoices)

# Fields of how the model runs, not of which candidates it finds.
_HOW = {"device", "dtype", "batch_size"}


@with_groups
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
    sample: SampleOption = DEFAULT_SAMPLE_SIZE,
    seed: SeedOption = 0,
    images: ImagesOption = None,
    dataset: DatasetOption = None,
    truth: TruthOption = None,
    truth_map: TruthMapOption = None,
    *,
    classes: PreviewClassChoices,
    model: PreviewModelChoices,
    sources: SourceChoices,
) -> None:
    """Test results on a sample (0 credits): every candidate kept with its score.

    Writes OUT/preview/: annotated images, candidates.parquet, summary.md with
    (shown)/(total) per class. Options left out keep the --from preview's values.
    """
    given = model.spec_fields(dataset)
    auto = split_auto(classes)
    check_truth_options(truth, truth_map)
    stored = None
    if from_ is not None:
        if source is not None:
            usage("give SOURCE or --from OUT, not both")
        if not classes.given:
            _refilter_or_refuse(
                from_,
                classes,
                given,
                sources,
                truth=truth,
                truth_map=truth_map,
                auto=auto,
            )
            return
        if images:
            usage("--from re-runs the stored sample: drop --images")
        stored = _stored_record(from_)
        source, out, images = stored.source, from_, list(stored.sample)
    if source is None:
        usage("missing SOURCE (a folder of images), or --from OUT")
    given["dataset"] = labeled_dataset(dataset, source)
    # Defaults: the stored preview's, else LabelSettings' own.
    base = stored.settings if stored else LabelSettings.model_construct()
    with (
        exit_on(ModelLoadError, code=EXIT_FAILED),
        exit_on(SettingsError, code=EXIT_USAGE),
    ):
        settings = build_settings(
            classes=classes.classes or [],
            ontology_file=classes.ontology,
            thresholds=classes.threshold or [],
            nms=classes.nms or base.nms,
            nms_iou=base.nms_iou if classes.nms_iou is None else classes.nms_iou,
            model=model_over_stored(given, stored.settings.model if stored else None),
        )
    if stored:
        settings = _keep_stored_thresholds(settings, stored.settings, classes.threshold)
    if auto and truth is None and not (stored and stored.truth):
        usage("--threshold auto needs human labels: give --truth PATH")
    if truth is not None:
        check_truth(truth, truth_map, settings.ontology.class_names)
    picked = split_images(images)
    kept_sources = stored.sources if stored else SourceOptions()
    reach = SourceOptions(
        s3_endpoint_url=sources.s3_endpoint_url or kept_sources.s3_endpoint_url,
        fps=sources.fps or kept_sources.fps,
    )
    preflight_or_exit(source=source, out=out)
    check_sample(source, out, reach, sample, seed, picked)
    with out_lock_or_exit(out, "autolabel preview"):
        warm_model_or_exit(settings)

        from flows.preview import preview as preview_flow

        with console.status("Running the preview on the sample ..."):
            summary = preview_flow(
                source=source,
                out=str(out),
                settings=settings,
                sample_size=sample,
                seed=seed,
                images=picked,
                sources=reach,
                truth=truth,
                truth_map=truth_map,
            )
        if auto:
            summary = show_auto_thresholds(out)
    print_preview(summary)
    raise typer.Exit(EXIT_SKIPPED if summary.skipped else 0)


def print_preview(summary) -> None:
    """The per-class table and where the preview's files are."""
    drawn = f"seed {summary.seed}" if summary.seed is not None else "picked"
    console.print(
        f"Test results on {len(summary.sample)} sample images ({drawn}): model run "
        f"once at a floor of {summary.floor:g}, {summary.candidates} candidates. "
        f"Cost: {summary.credits} credits (test results are free)."
    )
    table = Table("class", "threshold", "shown/total")
    for name, (kept, total) in summary.counts.items():
        table.add_row(shown(name), f"{summary.thresholds[name]:g}", f"{kept}/{total}")
    console.print(table)
    root = Path(summary.out) / "preview"
    console.print(
        f"Annotated images: {shown(root / 'images')}/ ({len(summary.images)}); "
        f"candidates: {shown(root / 'candidates.parquet')}; "
        f"summary: {shown(root / 'summary.md')}",
    )
    print_truth(summary)
    for path, reason in summary.skipped:
        console.print(f"[yellow]skipped[/yellow] {shown(f'{path}: {reason}')}")
    if summary.below_floor:
        console.print(
            f"[yellow]below the floor {summary.floor:g}:[/yellow] "
            f"{shown(', '.join(summary.below_floor))}: counts may be too low; run "
            "the preview on SOURCE again to see candidates under the floor"
        )


def print_truth(summary) -> None:
    """Per class P/R/F1 on the sample's labeled images, and the F1-optimal threshold."""
    if not summary.truth:
        return
    from tasks.preview_report import number

    table = Table(
        "class", "threshold", "precision", "recall", "F1", "F1-optimal threshold",
        title=f"Against {shown(summary.truth_source)} (the sample's labeled images)",
    )  # fmt: skip
    for name, score in summary.truth.items():
        best = (
            f"{score.suggested:g} (F1 {number(score.suggested_f1)})"
            if score.from_truth
            else f"keeps {score.threshold:g}: {shown(score.reason)}"
        )
        table.add_row(
            shown(name), f"{score.threshold:g}", number(score.precision),
            number(score.recall), number(score.f1), best,
        )  # fmt: skip
    console.print(table)


def split_auto(classes: ClassChoices) -> bool:
    """Take ``--threshold auto`` out of the threshold options; whether it was given."""
    options = classes.threshold or []
    auto = any(option.strip().lower() == AUTO for option in options)
    classes.threshold = [o for o in options if o.strip().lower() != AUTO] or None
    return auto


def check_truth_options(truth: str | None, truth_map: list[str] | None) -> None:
    """Refuse a bad --truth-map, or one without --truth, before any model loads."""
    from tasks.truth import MapError, parse_map_options

    if truth_map and truth is None:
        usage("--truth-map maps the classes of --truth: give --truth PATH too")
    with exit_on(MapError, code=EXIT_USAGE):
        parse_map_options(truth_map or [])


def check_truth(truth: str, truth_map: list[str] | None, classes: list[str]) -> None:
    """Read the truth and check --truth-map against its classes and ours, before the
    model loads: one line, exit 1 (unreadable) or 2 (a bad map)."""
    import pandas as pd

    from tasks.truth import MapError, TruthError, match_truth, parse_map_options
    from tasks.truth import read_truth as read

    with exit_on(TruthError, code=EXIT_FAILED):
        ground = read(truth)
    nothing = pd.DataFrame(
        columns=["image_id", "relative_path", "width", "height", "skipped_reason"]
    )
    with exit_on(MapError, code=EXIT_USAGE):
        match_truth(
            ground,
            nothing,
            our_classes=classes,
            class_map=parse_map_options(truth_map or []),
        )


def show_auto_thresholds(out: Path):
    """Show the preview at each class's F1-optimal threshold; say which classes kept
    theirs. No model call."""
    from tasks.preview import load_record
    from tasks.preview_report import show_preview
    from tasks.preview_truth import auto_thresholds

    with exit_on(PreviewError, code=EXIT_USAGE):
        tuned, choices = auto_thresholds(out, load_record(out).settings)
    summary = show_preview(str(out), tuned)
    report_auto(choices)
    return summary


def report_auto(choices) -> None:
    """One line per class: tuned from the truth, or kept (and why)."""
    for name, tuned in choices.items():
        if tuned.from_truth:
            console.print(
                f"--threshold auto: {shown(name)} = {tuned.threshold:g} "
                f"(F1 {tuned.score.f1:.3f} on {tuned.score.truth} labeled instances)"
            )
        else:
            console.print(
                f"[yellow]--threshold auto: {shown(name)} keeps "
                f"{tuned.threshold:g}[/yellow]: {shown(tuned.reason)}"
            )


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


def split_images(images: list[str] | None) -> list[str] | None:
    """``--images a.jpg,b.jpg --images c.jpg`` as one list; None when none given."""
    names = [name.strip() for option in images or [] for name in option.split(",")]
    return [name for name in names if name] or None


def check_sample(
    source: str,
    out: Path,
    sources: SourceOptions,
    size: int,
    seed: int,
    images: list[str] | None,
) -> None:
    """Refuse a bad source or --images before a model is loaded."""
    from tasks.preview import plan_sample

    with exit_on(SourceError, code=EXIT_FAILED), exit_on(PreviewError, code=EXIT_USAGE):
        plan_sample(
            source, str(out), size=size, seed=seed, images=images, options=sources
        )


def _refilter_or_refuse(
    out: Path,
    classes: ClassChoices,
    given: dict,
    sources: SourceChoices,
    *,
    truth: str | None = None,
    truth_map: list[str] | None = None,
    auto: bool = False,
) -> None:
    """``--from`` without classes: the stored candidates at new thresholds, or a
    refusal of options that would need the model."""
    changed = [
        ModelChoices.FLAGS.get(key, "--" + key.replace("_", "-"))
        for key, value in given.items()
        if value is not None and key not in _HOW
    ]
    changed += ["--fps"] if sources.fps is not None else []
    if changed:
        usage(
            "--from OUT without --class only re-filters the stored candidates: give "
            f"--class (or --ontology) to run the model again with {', '.join(changed)}"
        )
    from tasks.preview import load_record
    from tasks.preview_report import show_preview
    from tasks.truth import MapError, TruthError

    if truth is not None:
        from tasks.preview_truth import attach_truth

        with (
            exit_on(PreviewError, MapError, code=EXIT_USAGE),
            exit_on(TruthError, code=EXIT_FAILED),
        ):
            attach_truth(out, truth, truth_map)
    with exit_on(PreviewError, ThresholdError, SettingsError, code=EXIT_USAGE):
        stored = load_record(out).settings
        thresholds = merge_thresholds(stored.thresholds, classes.threshold or [])
        if classes.nms is not None:
            choice("--nms", classes.nms)
        summary = show_preview(
            str(out), thresholds, nms=classes.nms, nms_iou=classes.nms_iou
        )
    if auto:
        summary = show_auto_thresholds(out)
    print_preview(summary)
    raise typer.Exit(EXIT_SKIPPED if summary.skipped else 0)


def _stored_record(from_: Path):
    from tasks.preview import load_record

    with exit_on(PreviewError, code=EXIT_USAGE):
        return load_record(from_)


def _keep_stored_thresholds(
    settings: LabelSettings, stored: LabelSettings, options: list[str] | None
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
    with exit_on(ThresholdError, code=EXIT_USAGE):
        merged = merge_thresholds(kept, options or [])
    return settings.model_copy(update={"thresholds": merged})
