"""The review page's server: who may reach it, which files it serves, bad requests.

The page itself is tested in a browser (test_review_page.py); these call the HTTP API
directly (FastAPI's TestClient, and ``autolabel ui`` as a subprocess for the token).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from review_ui.app import TOKEN_COOKIE, create_app, is_loopback
from review_ui.jobs import ReviewSession
from tasks.preview import load_record, save_record
from tests.review_ui.conftest import LOCAL, ROOT


def test_serves_sample_images_by_position_only(previewed_out: Path):
    client = TestClient(create_app(ReviewSession(previewed_out)), base_url=LOCAL)
    preview = client.get("/api/preview").json()
    assert [image["index"] for image in preview["images"]] == [0, 1]
    image = client.get(f"/api/preview/images/1?key={preview['key']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    # A page still showing an older preview gets no image of the new one.
    assert client.get("/api/preview/images/1?key=older").status_code == 404
    for path in (
        "/api/preview/images/2",
        "/api/preview/images/-1",
        "/api/preview/images/..%2F..%2Fphotos%2Fsecret.txt",
        "/api/preview/images/../../photos/secret.txt",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/../jobs.py",
    ):
        response = client.get(path)
        assert response.status_code in (404, 422), path
        assert b"not for the page" not in response.content
        assert b"[project]" not in response.content


def test_loopback_server_refuses_other_host_names(previewed_out: Path):
    """A page on another site cannot reach it by rebinding its DNS name to 127.0.0.1."""
    client = TestClient(create_app(ReviewSession(previewed_out)), base_url=LOCAL)
    assert client.get("/api/state").status_code == 200
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    refused = client.get("/api/state", headers={"host": "attacker.example"})
    assert refused.status_code == 400


def test_token_is_required_when_set(previewed_out: Path):
    token = "tok-3f9a"
    app = create_app(ReviewSession(previewed_out), token=token, loopback_only=False)
    client = TestClient(app, base_url="http://192.0.2.10")
    for path in ("/", "/api/state", "/api/preview/images/0", "/static/review.js"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert token not in response.text
    assert client.get("/api/state?token=wrong").status_code == 401
    assert client.get("/api/state?token=%C3%A9t%C3%A9").status_code == 401
    bearer = {"authorization": f"Bearer {token}"}
    assert client.get("/api/state", headers=bearer).status_code == 200

    entry = client.get(f"/?token={token}", follow_redirects=False)
    assert entry.status_code == 303 and entry.headers["location"] == "/"
    assert client.cookies.get(TOKEN_COOKIE) == token  # the page keeps it
    assert client.get("/").status_code == 200
    assert client.get("/api/preview/images/0").status_code == 200


def test_bad_requests_get_a_reason_and_nothing_runs(previewed_out: Path):
    session = ReviewSession(previewed_out)
    client = TestClient(create_app(session), base_url=LOCAL)
    as_form = client.post("/api/preview", content="source=x", headers={
        "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert as_form.status_code == 415
    duplicate = client.post(
        "/api/preview",
        json={"source": "x", "classes": [{"name": "cat"}, {"name": "cat"}]},
    )
    assert duplicate.status_code == 400 and "cat" in duplicate.json()["error"]
    no_classes = client.post("/api/preview", json={"source": "x", "classes": []})
    assert no_classes.status_code == 422
    key = client.get("/api/preview").json()["key"]
    stale = client.post("/api/label", json={"key": "old", "thresholds": {"cat": 0.5}})
    assert stale.status_code == 409 and "reload" in stale.json()["error"]
    unknown = client.post("/api/label", json={"key": key, "thresholds": {"dog": 0.5}})
    assert unknown.status_code == 400 and "dog" in unknown.json()["error"]
    out_of_range = client.post(
        "/api/label", json={"key": key, "thresholds": {"cat": 2}}
    )
    assert out_of_range.status_code == 400
    assert session.job() is None


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")


def test_cli_on_a_network_address_makes_up_a_token(tmp_path: Path):
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ui", "--out", str(tmp_path / "out"),
         "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "AUTOLABEL_UI_TOKEN"},
    )  # fmt: skip
    try:
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"Review page: http://[^/]+:(\d+)/\?token=(\S{20,})", line)
        assert match, line
        port, token = match.groups()
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/state").status_code == 401
        authorized = httpx.get(
            f"{base}/api/state", headers={"authorization": f"Bearer {token}"}
        )
        assert authorized.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_no_preview_yet_and_a_source_gone(previewed_out: Path, tmp_path: Path):
    empty = TestClient(create_app(ReviewSession(tmp_path / "new")), base_url=LOCAL)
    assert empty.get("/api/state").json()["preview"] is None
    assert empty.get("/api/preview").status_code == 404
    assert empty.get("/api/preview/images/0").status_code == 404

    moved = tmp_path / "moved-out"
    shutil.copytree(previewed_out, moved)
    record = load_record(moved)
    save_record(moved, record.model_copy(update={"source": str(tmp_path / "gone")}))
    client = TestClient(create_app(ReviewSession(moved)), base_url=LOCAL)
    state = client.get("/api/state")
    assert state.status_code == 200  # the page still opens, with its results
    estimate = state.json()["preview"]["estimate"]
    assert "cannot count the source's images" in estimate["error"]


def test_one_job_at_a_time_and_a_failed_job_says_why(
    previewed_out: Path, monkeypatch: pytest.MonkeyPatch
):
    import flows.autolabel  # noqa: F401 - binds the real preview flow before the patch
    import flows.preview

    release = threading.Event()

    def slow_then_broken(**_: object):
        release.wait(30)
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(flows.preview, "preview", slow_then_broken)
    session = ReviewSession(previewed_out)
    client = TestClient(create_app(session), base_url=LOCAL)
    ask = {"source": "x", "classes": [{"name": "cat"}]}
    first = client.post("/api/preview", json=ask)
    assert first.status_code == 200 and first.json()["state"] == "running"
    assert client.get("/api/state").json()["preview"] is not None  # last one shown
    second = client.post("/api/preview", json=ask)
    assert second.status_code == 409 and "still going" in second.json()["error"]
    key = client.get("/api/preview").json()["key"]
    label = client.post("/api/label", json={"key": key, "thresholds": {"cat": 0.5}})
    assert label.status_code == 409
    release.set()
    deadline = time.monotonic() + 30
    while (job := client.get("/api/job").json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["id"] == first.json()["id"] and job["state"] == "failed"
    assert job["error"] == "RuntimeError: the GPU caught fire"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "bogus"], "--task 'bogus'"),
        (["--class", "cat", "--class", "cat"], "cat"),
        (["--credit-rates", "/nonexistent.yaml"], "nonexistent"),
    ],
)
def test_cli_refuses_bad_options_before_serving(args, message, tmp_path: Path):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["ui", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Review page" not in result.output
