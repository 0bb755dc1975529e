"""Runs across machines that cannot start fail at once, before any model loads: an
unreachable PostgreSQL ledger or an s3:// output whose bucket is not there is one
line, exit 1, and the database password is never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.deployments.conftest import free_port
from tests.photos import write_sample_photos
from tests.postgres import PASSWORD

runner = CliRunner()
# ui: an address this machine cannot serve on, so a missed check fails, never serves.
_UNSERVABLE = {"ui": ["--host", "192.0.2.1"]} | dict.fromkeys(
    ["label", "run", "label-sharded"], []
)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail loudly if anything tries to load a model."""

    def refuse(spec):
        raise AssertionError("a model was loaded although the run cannot start")

    monkeypatch.setattr("model_loaders.cache.get_model", refuse)


@pytest.fixture
def s3_credentials(s3_test_client, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # label-sharded only checks that a server is named; none is asked here.
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


@pytest.mark.parametrize("command", ["label", "run", "label-sharded", "ui"])
def test_an_unreachable_database_ledger_is_one_line(
    no_model_load, s3_credentials, tmp_path, command
):
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:{free_port()}/credits"

    result = runner.invoke(
        app,
        [command, str(photos), "--out", str(tmp_path / "out"),
         "--credits-ledger", url, "--class", "cat", *_UNSERVABLE[command]],
    )  # fmt: skip

    assert result.exit_code == 1, result.output
    line = _one_error_line(result.output)
    assert "credit ledger postgresql://me@127.0.0.1:" in line
    assert "Connection refused" in line
    assert PASSWORD not in result.output


@pytest.mark.parametrize(
    ("out", "words"),
    [
        (
            "s3://no-such-bucket/batch",
            "--out s3://no-such-bucket/batch: no such bucket",
        ),
        ("s3:///batch", "no bucket name"),
    ],
)
@pytest.mark.parametrize("command", ["label", "run", "label-sharded", "ui"])
def test_an_s3_output_without_its_bucket_is_one_line(
    no_model_load, s3_credentials, s3_endpoint, tmp_path, out, words, command
):
    photos = tmp_path / "photos"
    write_sample_photos(photos)

    result = runner.invoke(
        app,
        [command, str(photos), "--out", out,
         "--s3-endpoint-url", s3_endpoint, "--class", "cat",
         "--credits-ledger", str(tmp_path / "credits.sqlite"),
         *_UNSERVABLE[command]],
    )  # fmt: skip

    assert result.exit_code in (1, 2), result.output
    assert words in _one_error_line(result.output)


@pytest.mark.parametrize("command", ["label", "run", "label-sharded"])
def test_an_s3_output_another_machine_is_writing_is_one_line(
    no_model_load, s3_credentials, s3_endpoint, tmp_path, command
):
    from tasks.s3 import s3_client

    photos = tmp_path / "photos"
    write_sample_photos(photos)
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="busy-labels")
    holder = {"pid": 99, "host": "gpu-3", "since": "2026-12-01T03:00:00+00:00",
              "what": "autolabel label"}  # fmt: skip
    client.put_object(
        Bucket="busy-labels", Key="b1/.autolabel.lock", Body=json.dumps(holder)
    )

    result = runner.invoke(
        app,
        [command, str(photos), "--out", "s3://busy-labels/b1",
         "--s3-endpoint-url", s3_endpoint, "--class", "cat",
         "--credits-ledger", str(tmp_path / "credits.sqlite")],
    )  # fmt: skip

    assert result.exit_code == 1, result.output
    line = _one_error_line(result.output)
    assert "s3://busy-labels/b1 is being written by 'autolabel label'" in line
    assert "pid 99 on host gpu-3" in line
    client.delete_object(Bucket="busy-labels", Key="b1/.autolabel.lock")
    client.delete_bucket(Bucket="busy-labels")


def test_a_preview_to_an_s3_output_is_refused_by_name(no_model_load, tmp_path):
    """A preview writes a local folder; an s3:// --out must not become ./s3:/..."""
    photos = tmp_path / "photos"
    write_sample_photos(photos)

    result = runner.invoke(
        app, ["preview", str(photos), "--out", "s3://labels/p", "--class", "cat"]
    )

    assert result.exit_code == 2, result.output
    assert "the preview writes a local folder" in " ".join(result.output.split())
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_reusing_an_approval_from_s3_names_the_bucket_not_a_cache_folder(
    no_model_load, s3_credentials, s3_test_client, s3_endpoint, tmp_path
):
    photos = tmp_path / "photos"
    write_sample_photos(photos)

    def reuse(out: str):
        return runner.invoke(
            app,
            ["run", str(photos), "--reuse-approved", "--out", out,
             "--s3-endpoint-url", s3_endpoint,
             "--credits-ledger", str(tmp_path / "credits.sqlite")],
        )  # fmt: skip

    no_bucket = reuse("s3://no-such-bucket/b")
    assert no_bucket.exit_code == 1, no_bucket.output
    assert "s3://no-such-bucket/b: no such bucket" in _one_error_line(no_bucket.output)

    s3_test_client.create_bucket(Bucket="never-approved")
    no_file = reuse("s3://never-approved/b")
    assert no_file.exit_code == 2, no_file.output
    line = " ".join(no_file.output.split())
    assert "no approved settings in s3://never-approved/b/approved.json" in line
    assert ".cache" not in line
