"""``autolabel ui``: the review page, served on this machine.

The page generates test results on a sample (the preview flow, free), tunes per-class
thresholds with sliders in the browser, and approves them, which labels the whole
source (the autolabel flow) and shows its progress and report. See
``review_ui/app.py`` for the routes and who may reach them.

The page reads local folders only under ``--allow-source`` and the SOURCE given here
(the working directory when neither is given), so whoever can reach the page cannot
make it list and label another folder of this machine.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    BatchSizeOption,
    ChunkSizeOption,
    ClassOption,
    CreditChoices,
    DeviceOption,
    ModelOption,
    OntologyOption,
    PretrainedOption,
    SamCheckpointOption,
    SamModelTypeOption,
    SourceChoices,
    with_groups,
)
from cli.output import EXIT_FAILED, EXIT_USAGE, console, exit_on, fail, shown
from cli.settings import preflight_or_exit
from tasks import roboflow_source, s3
from tasks.preview import DEFAULT_SAMPLE_SIZE
from tasks.settings import SettingsError, choice, parse_classes
from tasks.sources import canonical_source


@with_groups
def ui(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Dataset the page starts with (folder, s3://... or roboflow://...); "
            "it can be changed on the page."
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            help="Output folder: test results, labels, report; or s3://bucket/prefix "
            "(worked on in a local staging folder, the batch's outputs uploaded)."
        ),
    ] = "out",
    classes: ClassOption = None,
    ontology: OntologyOption = None,
    task: Annotated[
        str | None,
        typer.Option(help="detect, segment, classify or classify-multi (the form's)."),
    ] = None,
    model: ModelOption = None,
    sample: Annotated[
        int, typer.Option("--sample", min=1, help="Images in the test sample.")
    ] = DEFAULT_SAMPLE_SIZE,
    host: Annotated[
        str,
        typer.Option(help="Address to serve on; anything but loopback needs a token."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, help="Port (0: any free one).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AUTOLABEL_UI_TOKEN",
            help="Token the page requires; made up and printed when --host is not "
            "a loopback address and none is given.",
        ),
    ] = None,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    sam_checkpoint: SamCheckpointOption = None,
    sam_model_type: SamModelTypeOption = "vit_h",
    pretrained: PretrainedOption = None,
    chunk_size: ChunkSizeOption = 128,
    allow_source: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-source",
            help="Folder the page may read sources from, with its subfolders "
            "(repeatable). SOURCE is always allowed; without either, the working "
            "directory. s3:// and roboflow:// sources are always allowed.",
        ),
    ] = None,
    *,
    credits: CreditChoices,
    sources: SourceChoices,
) -> None:
    """Serve the review page: test results, threshold sliders, approval, progress."""
    import uvicorn

    from review_ui.app import create_app, is_loopback
    from review_ui.jobs import ReviewSession, RunDefaults
    from tasks.credits import CreditRates, LedgerLocationError, resolve_ledger_path
    from tasks.s3 import local_folder

    with exit_on(SettingsError, OSError, ValueError, code=EXIT_USAGE):
        rates = (
            CreditRates.from_file(credits.credit_rates)
            if credits.credit_rates
            else CreditRates()
        )
        start_classes = _start_classes(classes or [], ontology)
        if task is not None:
            choice("--task", task)
    with exit_on(LedgerLocationError, code=EXIT_USAGE):
        ledger = resolve_ledger_path(local_folder(out), credits.credits_ledger)
    preflight_or_exit(
        source=None,
        out=out,
        ledger=ledger,
        s3_endpoint_url=sources.options().s3_endpoint_url,
    )
    loopback = is_loopback(host)
    token = token or None
    if not loopback and token is None:
        token = secrets.token_urlsafe(24)
    session = ReviewSession(
        out,
        RunDefaults(
            device=device,
            batch_size=batch_size,
            model_options={
                "segment": {
                    "sam_checkpoint": sam_checkpoint,
                    "sam_model_type": sam_model_type,
                },
                "classify": {"pretrained": pretrained},
                "classify-multi": {"pretrained": pretrained},
            },
            chunk_size=chunk_size,
            sources=sources.options(),
            rates=rates,
            ledger=credits.credits_ledger,
            dataset=credits.dataset,
            max_credits=credits.max_credits,
            allowed_sources=_allowed_sources(allow_source, source),
        ),
    )
    app = create_app(
        session,
        token=token,
        loopback_only=loopback,
        allowed_hosts=[host],
        page_defaults={
            "source": canonical_source(source) if source else None,
            "classes": start_classes,
            "task": task,
            "model": model,
            "sample_size": sample,
        },
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except OSError as error:
        fail(f"cannot serve on {host}:{port}: {error.strerror or error}", EXIT_FAILED)
    url = f"http://{_shown_host(host)}:{listener.getsockname()[1]}/"
    # stdout, one line, so scripts (and the tests) can read the address.
    print(f"Review page: {url}" + (f"?token={token}" if token else ""), flush=True)
    console.print(f"Outputs go to {shown(out)}/. Stop with Ctrl+C.")
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    server.run(sockets=[listener])


def _shown_host(host: str) -> str:
    """The host part of the printed URL: this machine's name for a wildcard address
    (0.0.0.0 is not an address another machine can open)."""
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _allowed_sources(given: list[Path] | None, source: str | None) -> tuple[Path, ...]:
    """The folders the page may read, resolved: each --allow-source and SOURCE when it
    is a folder; the working directory when neither is given. A bucket or project
    SOURCE alone allows no folder."""
    folders = [path.expanduser() for path in given or []]
    if source is not None and not (
        s3.is_s3(source) or roboflow_source.is_roboflow(source)
    ):
        folders.append(Path(source).expanduser())
    if not folders and source is None:
        folders.append(Path.cwd())
    return tuple(dict.fromkeys(folder.resolve() for folder in folders))


def _start_classes(options: list[str], ontology: Path | None) -> list[dict]:
    """The classes the form starts with: --ontology then --class, validated."""
    if not options and ontology is None:
        return []
    return [
        {
            "name": c.name,
            "descriptions": ""
            if list(c.descriptions) == [c.name]
            else "; ".join(c.descriptions),
        }
        for c in parse_classes(options, ontology).classes
    ]
