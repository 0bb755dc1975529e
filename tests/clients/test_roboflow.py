"""The shared Roboflow client on its own: the API key lookup in its order, which
failures are retried, and a key that never reaches an error or a log record, whatever
raised it (``requests``, the SDK, or anything else)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile

import pytest
import requests
from roboflow.adapters.rfapi import AnnotationSaveError, ImageUploadError

from clients.roboflow import (
    MAX_REASON_CHARS,
    RetryPolicy,
    RoboflowAccessError,
    RoboflowClient,
    RoboflowRequestError,
    RoboflowTarget,
    resolve_api_key,
    with_retries,
)

KEY = "testkey-client-never-shown-3"
URL = f"https://api.roboflow.com/acme/cans/upload?api_key={KEY}&name=a.jpg"
NO_WAIT = RetryPolicy(attempts=3, backoff_s=0.0)


def _http_error(status: int, body: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    response.url = URL
    return requests.HTTPError(f"{status} Error for url: {URL}", response=response)


def _wrapped_drop() -> ImageUploadError:
    """What the SDK raises for a dropped upload: the requests text, URL and all."""
    try:
        raise requests.ConnectionError(f"Connection aborted for url: {URL}")
    except requests.ConnectionError as error:
        try:
            raise ImageUploadError(str(error)) from error
        except ImageUploadError as wrapped:
            return wrapped


@pytest.mark.parametrize(
    ("failure", "calls", "reason"),
    [
        (requests.ConnectionError(f"Max retries exceeded with url: {URL}"), 3,
         "ConnectionError (network)"),
        (requests.Timeout(f"Read timed out: {URL}"), 3, "Timeout (network)"),
        (_http_error(503, f'{{"error": "busy", "url": "{URL}"}}'), 3, "HTTP 503: "),
        (_http_error(404, f"no such project (key {KEY})"), 1,
         "HTTP 404: no such project (key ***)"),
        (_wrapped_drop(), 3, "ConnectionError (network)"),
        (ImageUploadError(f"rate limited {KEY}", status_code=429), 3,
         "HTTP 429: rate limited ***"),
        (AnnotationSaveError(f"bad annotation for {KEY}", status_code=400), 1,
         "HTTP 400: bad annotation for ***"),
        (RuntimeError(f'{{"error": "invalid api key {KEY}"}}'), 1,
         '{"error": "invalid api key ***"}'),
        # The key where the reason is cut: no piece of it may be left.
        (RuntimeError("x" * (MAX_REASON_CHARS - 20) + KEY), 1, "x" * 20),
        (KeyError(KEY), 1, "'***'"),
        # The SDK saves an error answer as a version's zip, then fails to open it.
        (zipfile.BadZipFile("File is not a zip file"), 3,
         "the download is not a zip file"),
    ],
)  # fmt: skip
def test_a_key_never_appears_in_an_error_message(caplog, failure, calls, reason):
    caplog.set_level(logging.DEBUG)
    client = RoboflowClient(KEY, retry=NO_WAIT)
    attempts = []

    def call():
        attempts.append(1)
        raise failure

    with pytest.raises(RoboflowRequestError) as raised:
        client.call(call, what="upload a.jpg")

    error = raised.value
    assert len(attempts) == calls  # retried only when retrying can help
    assert str(error).startswith("cannot upload a.jpg")
    assert reason in error.reason and reason in str(error)
    assert error.__cause__ is None and error.__context__ is None
    assert client.describe(failure) == error.reason
    for text in (str(error), repr(error), error.reason, caplog.text, repr(client)):
        assert KEY not in text
        assert KEY[:12] not in text  # not even a piece of it
    assert "\n" not in str(error)


def test_a_retryable_failure_then_success_returns_and_waits_as_the_server_says(
    monkeypatch, caplog
):
    waits = []
    monkeypatch.setattr("clients.roboflow.time.sleep", waits.append)
    answers = [_http_error(429, "slow down"), _http_error(502, ""), "done"]

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    answers[0].response.headers["Retry-After"] = "7"
    policy = RetryPolicy(attempts=5, backoff_s=2.0, max_wait_s=30.0)
    assert with_retries(call, what="list x", retry=policy) == "done"
    assert waits == [7.0, 4.0]  # Retry-After, then the backoff of the 2nd retry
    assert caplog.text.count("retrying") == 2


def test_urllib3_debug_logs_of_a_client_show_no_key(caplog):
    caplog.set_level(logging.DEBUG)
    RoboflowClient(KEY)
    logging.getLogger("urllib3.connectionpool").debug(
        '%s "POST %s HTTP/1.1" 200 12', "https://api.roboflow.com:443", URL
    )
    assert KEY not in caplog.text
    assert "api_key=***" in caplog.text


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    """No key in the environment, no Secret block, no SDK config."""
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    monkeypatch.setattr("prefect.blocks.system.Secret.load", _no_block)
    config = tmp_path / "roboflow-config.json"
    monkeypatch.setenv("ROBOFLOW_CONFIG_DIR", str(config))
    return config


def _no_block(*args, **kwargs):
    raise ValueError("no such block")


def _secret_block(value):
    from prefect.blocks.system import Secret

    def load(name, *args, **kwargs):
        assert name == "roboflow-api-key"
        return Secret(value=value)

    return load


def _write_sdk_config(path, key):
    path.write_text(
        json.dumps(
            {
                "RF_WORKSPACE": "acme",
                "workspaces": {"acme": {"url": "acme", "apiKey": key}},
            }
        )
    )


@pytest.mark.parametrize(
    ("env", "secret", "config", "expected"),
    [
        ("env-key", "secret-key", "config-key", "env-key"),
        ("", "secret-key", "config-key", "secret-key"),  # empty is unset
        (None, "secret-key", "config-key", "secret-key"),
        (None, None, "config-key", "config-key"),
    ],
)
def test_the_api_key_is_looked_up_in_order(
    no_key, monkeypatch, env, secret, config, expected
):
    if env is not None:
        monkeypatch.setenv("ROBOFLOW_API_KEY", env)
    if secret is not None:
        monkeypatch.setattr("prefect.blocks.system.Secret.load", _secret_block(secret))
    _write_sdk_config(no_key, config)
    assert resolve_api_key("acme") == expected


def test_no_api_key_anywhere_says_where_to_put_one(no_key):
    with pytest.raises(RoboflowAccessError) as error:
        RoboflowClient.resolve()
    message = str(error.value)
    assert "set ROBOFLOW_API_KEY" in message
    assert "'roboflow-api-key'" in message
    assert "roboflow login" in message


@pytest.mark.parametrize(
    ("uri", "extra", "expected"),
    [
        ("roboflow://acme/cans", None, RoboflowTarget("acme", "cans")),
        ("roboflow://acme/cans/b1", "batch", RoboflowTarget("acme", "cans", "b1")),
        ("roboflow://acme/cans/b1", None, "expected roboflow://WORKSPACE/PROJECT'?$"),
        ("roboflow://acme", "batch", r"WORKSPACE/PROJECT\[/BATCH\]"),
        ("roboflow:///cans", None, "expected"),
        ("s3://acme/cans", None, "expected"),
    ],
)
def test_targets(uri, extra, expected):
    if isinstance(expected, RoboflowTarget):
        assert RoboflowTarget.parse(uri, extra=extra) == expected
        assert str(expected).startswith("roboflow://acme/cans")
    else:
        with pytest.raises(RoboflowAccessError, match=expected):
            RoboflowTarget.parse(uri, extra=extra)


@pytest.mark.parametrize(
    ("modules", "heavy"),
    [
        ("clients.roboflow", {"prefect", "roboflow", "requests"}),
        # supervision brings requests in already; the SDK and Prefect stay out.
        (
            "model_loaders.backends, model_loaders.roboflow_hosted",
            {"prefect", "roboflow"},
        ),
    ],
)
def test_importing_the_client_or_the_hosted_model_stays_light(modules, heavy):
    """Model loaders import the client at import time: neither may load what only a
    Roboflow model in use needs."""
    code = f"import sys, {modules}; print(sorted({heavy!r} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
