"""The command line's side of ``tasks.settings``: a user's options become settings, a
credit account and a loaded model, or one error line and the exit code that says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.options import ClassChoices, CreditChoices, ModelChoices, OutputChoices
from cli.output import EXIT_FAILED, EXIT_USAGE, console, exit_on, fail, shown
from model_loaders.protocol import ModelLoadError
from tasks.credits import CreditAccount
from tasks.s3 import local_folder
from tasks.settings import (
    LabelSettings,
    SettingsError,
    build_settings,
    check_upload_target,
    choice,
    credit_account,
    labeled_dataset,
)
from tasks.splits import SplitError


def batch_settings(
    source: str,
    out: str,
    classes: ClassChoices,
    model: ModelChoices,
    output: OutputChoices,
    credits: CreditChoices,
) -> LabelSettings:
    """The settings of a labeling batch, every option checked (exit 2 on the first
    bad one) before anything heavy is loaded. A --model folder that is no model any
    backend knows is one line naming what was found, exit 1 (``model_family``)."""
    dataset = labeled_dataset(credits.dataset, output.upload_to, source)
    with (
        exit_on(ModelLoadError, code=EXIT_FAILED),
        exit_on(SettingsError, SplitError, code=EXIT_USAGE),
    ):
        choice("--quality", output.quality)
        output.splits()
        settings = build_settings(
            classes=classes.classes or [],
            ontology_file=classes.ontology,
            thresholds=classes.threshold or [],
            nms=classes.nms,
            nms_iou=classes.nms_iou,
            chunk_size=output.chunk_size,
            model=model.spec_fields(dataset),
        )
        check_upload_target(output.upload_to, settings, out)
    return settings


def account_or_exit(
    credits: CreditChoices,
    *,
    out: str | Path,
    source: str,
    settings: LabelSettings,
    upload_to: str | None,
    s3_endpoint_url: str | None = None,
) -> CreditAccount:
    """Who pays for the batch (every labeling run is metered; test results never
    are), once the source, output folder (an s3:// one: its bucket), ledger and
    upload target are checked (``preflight_or_exit``). The default ledger lives in
    the run's local folder (an s3:// output's staging folder)."""
    with exit_on(SettingsError, code=EXIT_USAGE):
        account = credit_account(
            out=local_folder(out),
            source=source,
            settings=settings,
            ledger=credits.credits_ledger,
            rates=credits.credit_rates,
            dataset=credits.dataset,
            max_credits=credits.max_credits,
        )
    preflight_or_exit(
        source=source,
        out=out,
        ledger=account.ledger_path,
        upload_to=upload_to,
        s3_endpoint_url=s3_endpoint_url,
    )
    return account


def warm_model_or_exit(settings: LabelSettings) -> None:
    """Load the model into this process's cache before the flow starts.

    The flow's tasks run in this process and reuse it; a model that cannot be loaded
    fails here with one line instead of a task traceback. A backend that can tell
    from its tokenizer alone that a description is too long (``check_ontology``)
    says so before the weights load (exit 2).
    """
    from model_loaders.backends import backend_class
    from model_loaders.cache import get_model

    spec = settings.model
    with (
        console.status(f"Loading {shown(spec.model)} ..."),
        exit_on(ModelLoadError, code=EXIT_FAILED),
    ):
        check = getattr(backend_class(spec.backend), "check_ontology", None)
        if check is not None:
            with exit_on(ValueError, code=EXIT_USAGE):
                check(spec, settings.ontology)
        get_model(spec)


def preflight_or_exit(
    *,
    source: str | None,
    out: str | Path | None,
    ledger: str | Path | None = None,
    upload_to: str | None = None,
    s3_endpoint_url: str | None = None,
) -> None:
    """Check the source, output folder (or an s3:// output's bucket), ledger and
    upload target before any model loads: one line and exit 1 (2 for options that
    contradict each other)."""
    from tasks import preflight

    try:
        if source is not None:
            preflight.check_source(source)
        if out is not None:
            preflight.check_s3_out(str(out), s3_endpoint_url)
            preflight.check_out(local_folder(out), source=source)
        if ledger is not None:
            preflight.check_ledger(ledger)
        preflight.check_upload_target(upload_to)
    except preflight.PreflightError as error:
        fail(error, EXIT_USAGE if error.usage else EXIT_FAILED)


@contextmanager
def out_lock_or_exit(
    out: str | Path, what: str, s3_endpoint_url: str | None = None
) -> Iterator[None]:
    """Hold the output for this run: a second run on it (another process, maybe
    another machine) is refused in one line, exit 1; see ``tasks.out_lock`` (a
    folder, an s3:// output's staging folder) and ``tasks.s3_lock`` (its prefix)."""
    from tasks.out_lock import OutFolderLocked
    from tasks.s3_lock import hold_output_lock

    with (
        exit_on(OutFolderLocked, code=EXIT_FAILED),
        hold_output_lock(out, what, s3_endpoint_url),
    ):
        yield
