"""The review page against other sites and other folders.

Another page open in the same browser must not be able to start runs (which charge
credits) or frame the page; the page must not read folders it was not given; user
text must reach the page as text. The HTTP side uses FastAPI's TestClient with the
flows replaced by recorders (no model runs); the last test drives Chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from review_ui.app import STATIC_DIR, create_app
from review_ui.jobs import ReviewSession, RunDefaults
from tests.review_ui.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.review_ui.conftest import LOCAL, ROOT

FRAME_HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """The preview and autolabel flows replaced by recorders of their calls."""
    import flows.autolabel
    import flows.preview

    calls: list[tuple[str, dict]] = []

    def preview(**kwargs):
        calls.append(("preview", kwargs))
        return SimpleNamespace(counts={}, credits=0.0)

    def autolabel(**kwargs):
        calls.append(("autolabel", kwargs))
        raise RuntimeError("recorded only")

    monkeypatch.setattr(flows.preview, "preview", preview)
    monkeypatch.setattr(flows.autolabel, "autolabel", autolabel)
    return calls


@pytest.fixture
def out(previewed_out: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A copy of the previewed output folder this test may change."""
    return Path(shutil.copytree(previewed_out, tmp_path / "out"))


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _wait(client: TestClient) -> dict:
    deadline = time.monotonic() + 30
    while (job := client.get("/api/job").json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return job


ASK = {"source": "photos", "classes": [{"name": "cat"}]}


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://attacker.example"},
        {"origin": "http://127.0.0.1:9999"},  # another port: another origin
        {"origin": "https://127.0.0.1"},  # another scheme
        {"origin": "null"},  # a sandboxed frame, a file:// page
        {"origin": "http://127.0.0.1.attacker.example"},
        {"referer": "http://attacker.example/page.html"},
        {"origin": "http://attacker.example", "referer": f"{LOCAL}/"},
    ],
)
def test_another_sites_request_is_refused_and_starts_nothing(
    out: Path, flows: list, headers: dict
):
    session = ReviewSession(out)
    client = TestClient(create_app(session), base_url=LOCAL)
    key = client.get("/api/preview").json()["key"]
    before = _snapshot(out)
    approve = {"key": key, "thresholds": {"cat": 0.5}}
    for method, path, body in [
        ("POST", "/api/preview", ASK),
        ("POST", "/api/label", approve),
        ("POST", "/api/train", {"base": "x", "epochs": 1}),
        ("PUT", "/api/label", approve),
        ("DELETE", "/api/preview", None),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path)
        error = response.json()["error"]
        assert "another site" in error and "\n" not in error
    assert session.job() is None and flows == []
    assert _snapshot(out) == before
    # The same approval without the foreign header does start the batch.
    assert client.post("/api/label", json=approve).status_code == 200
    assert _wait(client)["kind"] == "label" and [c[0] for c in flows] == ["autolabel"]


@pytest.mark.parametrize(
    ("base_url", "headers"),
    [
        (LOCAL, {}),  # curl, a script: no Origin, no Referer
        (LOCAL, {"origin": LOCAL}),
        (LOCAL, {"origin": "http://127.0.0.1:80"}),  # the default port spelled out
        ("http://127.0.0.1:8765", {"origin": "http://127.0.0.1:8765"}),
        ("http://localhost:8765", {"origin": "http://LOCALHOST:8765"}),
        ("http://127.0.0.1:8765", {"referer": "http://127.0.0.1:8765/?x=1"}),
    ],
)
def test_same_origin_and_no_origin_still_work(
    out: Path, flows: list, base_url: str, headers: dict
):
    session = ReviewSession(out)
    client = TestClient(create_app(session), base_url=base_url)
    started = client.post("/api/preview", json=ASK, headers=headers)
    assert started.status_code == 200, started.text
    assert _wait(client)["state"] == "done"
    assert [c[0] for c in flows] == ["preview"]
    key = client.get("/api/preview").json()["key"]
    approve = {"key": key, "thresholds": {"cat": 0.5}}
    assert client.post("/api/label", json=approve, headers=headers).status_code == 200
    assert _wait(client)["kind"] == "label"
    assert [c[0] for c in flows] == ["preview", "autolabel"]


def test_every_response_forbids_framing(out: Path):
    client = TestClient(create_app(ReviewSession(out)), base_url=LOCAL)
    key = client.get("/api/preview").json()["key"]
    responses = {
        "page": client.get("/"),
        "script": client.get("/static/review.js"),
        "style": client.get("/static/review.css"),
        "state": client.get("/api/state"),
        "job": client.get("/api/job"),
        "image": client.get(f"/api/preview/images/0?key={key}"),
        "favicon": client.get("/favicon.ico"),
        "missing": client.get("/static/nothing.js"),
        "other host": client.get("/", headers={"host": "attacker.example"}),
        "other site": client.post(
            "/api/preview", json=ASK, headers={"origin": "http://a.example"}
        ),
        "form": client.post(
            "/api/preview", content="x", headers={"content-type": "text/plain"}
        ),  # fmt: skip
        "invalid": client.post("/api/preview", json={"source": "x", "classes": []}),
    }
    token_app = create_app(ReviewSession(out), token="t0k", loopback_only=False)
    no_token = TestClient(token_app, base_url="http://192.0.2.10")
    responses["no token"] = no_token.get("/api/state")
    responses["token entry"] = no_token.get("/?token=t0k", follow_redirects=False)
    expected = {"page": 200, "script": 200, "style": 200, "state": 200, "job": 200,
                "image": 200, "favicon": 204, "missing": 404, "other host": 400,
                "other site": 403, "form": 415, "invalid": 422, "no token": 401,
                "token entry": 303}  # fmt: skip
    assert {name: r.status_code for name, r in responses.items()} == expected
    for name, response in responses.items():
        for header, value in FRAME_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)


def _allowing(tmp_path: Path) -> tuple[TestClient, ReviewSession, dict[str, Path]]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (tmp_path / "allowed-not").mkdir()  # shares the allowed folder's name as a prefix
    (allowed / "link-out").symlink_to(outside, target_is_directory=True)
    (allowed / "link-in").symlink_to(allowed / "sub", target_is_directory=True)
    session = ReviewSession(
        tmp_path / "out", RunDefaults(allowed_sources=(allowed / "sub" / "..",))
    )
    return TestClient(create_app(session), base_url=LOCAL), session, {
        "allowed": allowed, "outside": outside}  # fmt: skip


def test_a_folder_outside_the_allow_list_is_refused(tmp_path: Path, flows: list):
    client, session, folders = _allowing(tmp_path)
    allowed, outside = folders["allowed"], folders["outside"]
    for source, named in [
        (outside, outside),
        (allowed / ".." / "outside", outside),
        (allowed / "link-out", outside),  # a symlink inside pointing outside
        (tmp_path / "allowed-not", tmp_path / "allowed-not"),
        (tmp_path, tmp_path),  # the allowed folder's parent
        (Path("/"), Path("/")),
    ]:
        response = client.post("/api/preview", json={**ASK, "source": str(source)})
        assert response.status_code == 400, source
        error = response.json()["error"]
        assert str(named.resolve()) in error and "--allow-source" in error, error
        assert "\n" not in error
    assert session.job() is None and flows == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "source",
    ["allowed", "allowed/sub", "allowed/link-in", "allowed/sub/../sub",
     "s3://bucket/photos", "roboflow://workspace/project/1"],
)  # fmt: skip
def test_a_source_inside_the_allow_list_or_remote_runs(
    tmp_path: Path, flows: list, source: str
):
    client, _, _ = _allowing(tmp_path)
    given = source if "://" in source else str(tmp_path / source)
    response = client.post("/api/preview", json={**ASK, "source": given})
    assert response.status_code == 200, response.text
    assert _wait(client)["state"] == "done"
    assert [(kind, call["source"]) for kind, call in flows] == [("preview", given)]


def _served_app(monkeypatch: pytest.MonkeyPatch, args: list[str]):
    """The app ``autolabel ui ARGS`` would serve (the server is not started)."""
    import uvicorn
    from typer.testing import CliRunner

    from cli.main import app

    served = []

    def run(server, sockets=None):
        served.append(server.config.app)
        for listener in sockets or []:
            listener.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(app, ["ui", "--port", "0", *args])
    assert result.exit_code == 0, result.output
    assert len(served) == 1
    return TestClient(served[0], base_url=LOCAL)


def _refused(client: TestClient, folder: Path | str) -> bool:
    response = client.post("/api/preview", json={**ASK, "source": str(folder)})
    if response.status_code == 400:
        assert "--allow-source" in response.json()["error"]
        return True
    assert response.status_code == 200, response.text
    _wait(client)
    return False


def test_the_default_allow_list_is_the_command_lines_source(
    tmp_path: Path, flows: list, monkeypatch: pytest.MonkeyPatch
):
    photos, other = tmp_path / "photos", tmp_path / "other"
    (photos / "more").mkdir(parents=True)
    other.mkdir()
    monkeypatch.chdir(tmp_path)  # the working directory holds both: not the default
    client = _served_app(monkeypatch, [str(photos), "--out", str(tmp_path / "out")])
    assert _refused(client, other) and _refused(client, tmp_path)
    assert not _refused(client, photos) and not _refused(client, photos / "more")
    assert [call["source"] for _, call in flows] == [str(photos), str(photos / "more")]


def test_without_a_source_the_working_directory_is_allowed(
    tmp_path: Path, flows: list, monkeypatch: pytest.MonkeyPatch
):
    work, other = tmp_path / "work", tmp_path / "other"
    (work / "photos").mkdir(parents=True)
    other.mkdir()
    monkeypatch.chdir(work)
    client = _served_app(monkeypatch, ["--out", str(tmp_path / "out")])
    assert _refused(client, other) and _refused(client, tmp_path)
    assert not _refused(client, work / "photos") and not _refused(client, work)


def test_allow_source_adds_folders_and_a_bucket_source_adds_none(
    tmp_path: Path, flows: list, monkeypatch: pytest.MonkeyPatch
):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    for folder in (one, two, other):
        folder.mkdir()
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    client = _served_app(
        monkeypatch, ["s3://bucket/x", *out, "--allow-source", "one",
                      "--allow-source", str(two)],
    )  # fmt: skip
    assert not _refused(client, one) and not _refused(client, two)
    assert _refused(client, other)
    bucket_only = _served_app(monkeypatch, ["s3://bucket/x", *out])
    assert _refused(bucket_only, one) and _refused(bucket_only, tmp_path)
    assert not _refused(bucket_only, "s3://bucket/y")


def test_page_script_builds_no_html_from_strings():
    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in text, (script.name, sink)


MARKUP = "<img src=x onerror=document.body.dataset.pwned=1>"


def test_user_text_is_shown_as_text(tmp_path: Path):
    """A folder name with markup comes back in the page's error line as text."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    photos = tmp_path / "photos"
    photos.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ui", str(photos), "--out",
         str(tmp_path / "out"), "--class", MARKUP, "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "AUTOLABEL_UI_TOKEN"},
    )  # fmt: skip
    try:
        url = process.stdout.readline().strip().removeprefix("Review page: ")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS
            )
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            assert page.locator(".class-name").input_value() == MARKUP
            outside = tmp_path / MARKUP.replace("/", "_")
            page.locator("#source").fill(str(outside))
            page.click("#generate")
            page.wait_for_selector("#status.error")
            status = page.locator("#status")
            assert str(outside.resolve()) in status.text_content()
            assert "--allow-source" in status.text_content()
            page.wait_for_timeout(300)  # an injected image's onerror would run
            assert status.locator("img").count() == 0
            assert page.locator("img[src='x']").count() == 0
            assert page.evaluate("document.body.dataset.pwned") is None
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
