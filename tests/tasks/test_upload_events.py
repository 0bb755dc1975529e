"""Upload events and what label-new-uploads makes of them, without a server: dataset
ids, the event an uploader posts (the printed curl command, run by bash), the images an
upload names, and the approved settings run on a worker's device.
(Events starting real runs: tests/deployments.)"""

from __future__ import annotations

import json
import subprocess

import pytest
from prefect.events import Event
from typer.testing import CliRunner

from cli.main import app
from model_loaders.ontology import Ontology
from tasks.approval import (
    ApprovalError,
    ApprovedSettings,
    approved_settings,
    now_utc,
    save_approved,
)
from tasks.settings import LabelSettings
from tasks.upload_events import (
    UploadEventError,
    check_dataset_id,
    dataset_account,
    dataset_resource_id,
    upload_event_curl,
    wanted_images,
)


@pytest.mark.parametrize(
    ("dataset", "ok"),
    [
        ("A", True),
        ("shelf-photos_2024", True),
        ("9lives", True),
        ("", False),
        ("a.b", False),  # would add a segment to the resource id
        ("a*", False),  # a trigger would read it as a wildcard
        ("-a", False),
        ("a b", False),
        ("x" * 101, False),
    ],
)
def test_dataset_ids(dataset, ok):
    if ok:
        assert check_dataset_id(dataset) == dataset
        assert dataset_resource_id(dataset) == f"autolabel.dataset.{dataset}"
    else:
        with pytest.raises(UploadEventError, match="dataset id"):
            check_dataset_id(dataset)


def test_the_printed_curl_command_posts_one_valid_upload_event():
    command = upload_event_curl(
        "http://127.0.0.1:4200/api/",
        "shelf",
        "/data/shelf/out",
        "/data/it's here",  # a quote in a path must survive the shell
        ["a.jpg", "b/c.jpg"],
    )
    assert command.startswith("curl -sS -X POST http://127.0.0.1:4200/api/events ")
    # Run it with a stand-in curl that prints the body it was given.
    shown = subprocess.run(
        ["bash", "-c", 'curl() { printf "%s" "${@: -1}"; }\n' + command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (body,) = json.loads(shown)
    event = Event.model_validate(body)  # the id and time the shell filled in
    assert event.event == "autolabel.images.uploaded"
    assert event.resource.id == "autolabel.dataset.shelf"
    assert event.payload == {
        "out": "/data/shelf/out",
        "source": "/data/it's here",
        "images": ["a.jpg", "b/c.jpg"],
        "manifest": None,
    }


def test_notify_upload_refuses_bad_ids_and_prints_curl_with_absolute_paths(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["notify-upload", "a.b", "--out", "o", "--source", "s"])
    assert bad.exit_code == 2 and "dataset id 'a.b'" in bad.output
    printed = runner.invoke(
        app,
        [
            "notify-upload",
            "A",
            "--out",
            "out",
            "--source",
            str(tmp_path),
            "--print-curl",
        ],  # fmt: skip
    )
    assert printed.exit_code == 0, printed.output
    assert '"autolabel.dataset.A"' in printed.stdout
    assert f'"source": "{tmp_path}"' in printed.stdout
    assert '"out": "/' in printed.stdout  # workers start elsewhere: no relative paths


@pytest.mark.parametrize(
    ("images", "manifest", "expected"),
    [
        (None, None, None),  # a scan: every image not labeled yet
        ([], None, []),
        (["a.jpg", "a.jpg"], None, ["a.jpg"]),
        (None, "a.jpg\n# comment\n\nb.jpg\n", ["a.jpg", "b.jpg"]),
        (["z.jpg"], '["a.jpg", "z.jpg"]', ["z.jpg", "a.jpg"]),
    ],
)
def test_the_images_an_upload_names(tmp_path, images, manifest, expected):
    path = None
    if manifest is not None:
        path = tmp_path / "manifest.txt"
        path.write_text(manifest)
    assert wanted_images(images, str(path) if path else None) == expected


def test_approved_settings_run_on_this_workers_device(tmp_path):
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["cat"]), chunk_size=64
    )
    with pytest.raises(ApprovalError, match="no approved settings"):
        approved_settings(str(tmp_path))
    save_approved(
        tmp_path,
        ApprovedSettings(settings=settings, approved_by="me", approved_at=now_utc()),
    )
    assert approved_settings(str(tmp_path)) == settings
    on_gpu = approved_settings(str(tmp_path), device="cuda", batch_size=16)
    assert (on_gpu.model.device, on_gpu.model.batch_size) == ("cuda", 16)
    assert on_gpu.fingerprint() == settings.fingerprint()  # the same labels
    account = dataset_account(str(tmp_path), "cats", on_gpu, max_credits=1.0)
    assert account.ledger_path == str(tmp_path / "credits.sqlite")
    assert (account.dataset, account.task, account.max_credits) == (
        "cats",
        "detect",
        1.0,
    )
    with pytest.raises(UploadEventError):
        dataset_account(str(tmp_path), "not a dataset id", on_gpu, None)
