"""Upload events: how a dataset's new images reach the ``label-new-uploads`` deployment.

An ingest step (or any uploader, through ``POST /api/events``) emits one
``autolabel.images.uploaded`` event per upload. Its resource id names the dataset
(``autolabel.dataset.<dataset>``) and its payload says where the dataset's outputs live
and which images are new. The deployment's trigger (deployments/prefect.yaml) turns the
event into a flow run with those values as parameters, so an upload to one dataset can
only ever start a run for that dataset.

The open-source Prefect server has no webhooks: an uploader outside Prefect posts the
same JSON to the API instead (``upload_event_curl`` prints the command).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from pathlib import Path
from typing import Any
from uuid import uuid4

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.credits import CreditAccount
from tasks.settings import LabelSettings, credit_account

UPLOAD_EVENT = "autolabel.images.uploaded"
RESOURCE_PREFIX = "autolabel.dataset."
DATASET_LABEL = "autolabel.dataset"
# Letters, digits, '-' and '_': no '.' (the id would stop being one segment) and no
# '*' (Prefect would read it as a wildcard when a trigger matches on it).
_NEW_UUID = "uuidgen 2>/dev/null || cat /proc/sys/kernel/random/uuid"
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


class UploadEventError(ValueError):
    """An upload event that cannot be sent; says what to fix."""


def check_dataset_id(dataset: str) -> str:
    """``dataset`` if it can name a resource; UploadEventError otherwise.

    Raises:
        UploadEventError: For an empty id or one with other characters than letters,
            digits, '-' and '_' (at most 100).
    """
    if not _DATASET_ID.fullmatch(dataset):
        raise UploadEventError(
            f"dataset id {dataset!r}: use letters, digits, '-' and '_' (at most 100), "
            "starting with a letter or digit"
        )
    return dataset


def dataset_resource_id(dataset: str) -> str:
    """The event resource id of ``dataset``: what a trigger matches on."""
    return RESOURCE_PREFIX + check_dataset_id(dataset)


def upload_event_resource(dataset: str) -> dict[str, str]:
    """The resource labels of an upload event for ``dataset``."""
    return {
        "prefect.resource.id": dataset_resource_id(dataset),
        "prefect.resource.name": dataset,
        DATASET_LABEL: dataset,
    }


def upload_event_payload(
    *,
    out: str,
    source: str,
    images: list[str] | None = None,
    manifest: str | None = None,
) -> dict[str, Any]:
    """The payload of an upload event; every key present, so templates never miss one.

    Args:
        out: The dataset's output folder (holds approved.json and the labels).
        source: Where the dataset's images are (folder, s3://..., roboflow://...).
        images: The new images (paths relative to ``source``, or URIs); None: all
            images not labeled yet.
        manifest: A file listing the new images instead (one per line, or a JSON
            list), for uploads too big for an event.
    """
    return {
        "out": out,
        "source": source,
        "images": list(images) if images is not None else None,
        "manifest": manifest,
    }


def emit_upload_event(
    dataset: str,
    out: str,
    source: str,
    images: list[str] | None = None,
    *,
    manifest: str | None = None,
) -> Any:
    """Tell Prefect that ``dataset`` has new images; returns the Event (None if off).

    Non-blocking, like every ``emit_event``: the event is sent by a background worker
    that flushes when the process exits (call ``flush_events`` to wait earlier).
    """
    from prefect.events import emit_event

    return emit_event(
        event=UPLOAD_EVENT,
        resource=upload_event_resource(dataset),
        payload=upload_event_payload(
            out=out, source=source, images=images, manifest=manifest
        ),
    )


def flush_events(timeout_s: float = 30.0) -> None:
    """Wait until events emitted by this process have been sent to the server."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout_s)


def upload_event_json(
    dataset: str,
    out: str,
    source: str,
    images: list[str] | None = None,
    *,
    manifest: str | None = None,
    occurred: str | None = None,
    event_id: str | None = None,
) -> list[dict[str, Any]]:
    """The body of ``POST /api/events`` for one upload event (a list of events)."""
    from datetime import datetime, timezone

    return [
        {
            "id": event_id or str(uuid4()),
            "occurred": occurred or datetime.now(timezone.utc).isoformat(),
            "event": UPLOAD_EVENT,
            "resource": upload_event_resource(dataset),
            "related": [],
            "payload": upload_event_payload(
                out=out, source=source, images=images, manifest=manifest
            ),
        }
    ]


def upload_event_curl(
    api_url: str,
    dataset: str,
    out: str,
    source: str,
    images: list[str] | None = None,
    *,
    manifest: str | None = None,
) -> str:
    """A curl command posting the same upload event, for uploaders outside Python.

    The event id and time are filled in by the shell (``uuidgen``, or the kernel's
    UUID source on Linux without it; ``date``), so the command can be pasted into a
    script and run many times: every run is a new event.
    """
    body = upload_event_json(
        dataset,
        out,
        source,
        images,
        manifest=manifest,
        occurred="__OCCURRED__",
        event_id="__ID__",
    )
    text = json.dumps(body, indent=2)
    quoted = shlex.quote(text)
    # Re-open the single-quoted JSON around the two shell substitutions.
    quoted = quoted.replace('"__ID__"', f'"\'"$({_NEW_UUID})"\'"').replace(
        '"__OCCURRED__"', '"\'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"\'"'
    )
    return (
        f"curl -sS -X POST {shlex.quote(api_url.rstrip('/') + '/events')} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {quoted}"
    )


def send_upload_event(
    dataset: str,
    out: str,
    source: str,
    images: list[str] | None = None,
    *,
    manifest: str | None = None,
) -> str:
    """Send one upload event now and wait until the server took it; returns its id.

    For the command line: unlike ``emit_upload_event`` it fails loudly when the
    server named by PREFECT_API_URL cannot be reached.
    """
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(
        event=UPLOAD_EVENT,
        resource=upload_event_resource(dataset),
        payload=upload_event_payload(
            out=out, source=source, images=images, manifest=manifest
        ),
    )

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            await client.emit(event)

    asyncio.run(send())
    return str(event.id)


def read_manifest(path: str) -> list[str]:
    """The images a manifest file lists: a JSON list, or one per line (# comments).

    Raises:
        ValueError: If the file is JSON but not a list of strings.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = json.loads(text)
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"manifest {path}: expected a JSON list of image paths")
        return items
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def wanted_images(images: list[str] | None, manifest: str | None) -> list[str] | None:
    """The images an upload names (event list + manifest); None: every new image."""
    if images is None and manifest is None:
        return None
    listed = list(images or []) + (read_manifest(manifest) if manifest else [])
    return list(dict.fromkeys(listed))


def dataset_account(
    out: str, dataset: str, settings: LabelSettings, max_credits: float | None
) -> CreditAccount:
    """The dataset's credit account: ``OUT/credits.sqlite``, booked to ``dataset``.

    Raises:
        UploadEventError: If ``dataset`` is not a valid dataset id.
    """
    check_dataset_id(dataset)
    return credit_account(
        out=out,
        source=dataset,
        settings=settings,
        dataset=dataset,
        max_credits=max_credits,
    )


def dataset_lock(dataset: str) -> str:
    """Create (once) the one-slot concurrency limit that serializes a dataset's runs.

    A scan and an upload event of the same dataset at the same time would both see
    an image as new and label it into two chunks; one run at a time per dataset means
    the second one plans after the first has added its labels. Runs of different
    datasets never wait for each other. Returns the limit's name.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"autolabel-dataset-{check_dataset_id(dataset)}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run of the dataset may create it first.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    return name


dataset_lock_task = task(dataset_lock, name="dataset-lock", cache_policy=NO_CACHE)
wanted_images_task = task(wanted_images, name="read-upload", cache_policy=NO_CACHE)
