"""A Roboflow-trained model as the labeler, through the real roboflow SDK against a
local stub of the Roboflow API and its hosted inference endpoint (127.0.0.1): the
requests the SDK sends, predictions mapped to detections, the same-dataset rule,
retries, and an API key that never shows up in logs, output or errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from model_loaders import cache
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelLoadError, ModelSpec
from model_loaders.roboflow_hosted import (
    HostedInferenceError,
    RetryPolicy,
    RoboflowHostedModel,
    RoboflowModelRef,
)
from tasks.label import label_chunk, plan_chunks
from tasks.labels import OutputLayout, read_labels
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds

API_KEY = "testkey-hosted-do-not-leak-7"
MODEL = "roboflow://acme/cans/3"
DATASET = "roboflow://acme/cans"
ONTOLOGY = Ontology.from_class_options(["Person", "soda: a soda can"])
CLASS_MAP = ("can=soda",)
FAST = RetryPolicy(attempts=4, backoff_s=0.01)
# Opening a model: the key check, then the project twice (its versions).
OPENED = [("POST", "/"), ("GET", "/acme/cans"), ("GET", "/acme/cans")]


def _predictions(width: int, height: int) -> list[dict]:
    """What the hosted model 'sees': center x/y, width, height in image pixels."""
    return [
        {
            "x": 50,
            "y": 40,
            "width": 20,
            "height": 10,
            "class": "can",
            "confidence": 0.9,
        },
        {
            "x": 10,
            "y": 10,
            "width": 40,
            "height": 30,
            "class": "person",
            "confidence": 0.5,
        },
        # Reaches past the bottom-right corner: clipped.
        {
            "x": width - 5,
            "y": height - 5,
            "width": 20,
            "height": 20,
            "class": "Person",
            "confidence": 0.4,
        },
        {"x": 30, "y": 30, "width": 8, "height": 8, "class": "dog", "confidence": 0.8},
        # Returned at confidence=30 (whole percent) but under a 0.305 floor: dropped.
        {
            "x": 60,
            "y": 60,
            "width": 8,
            "height": 8,
            "class": "can",
            "confidence": 0.302,
        },
        {"x": 70, "y": 70, "width": 8, "height": 8, "class": "can", "confidence": 0.1},
    ]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    image_size: tuple[int, int] | None = None


@dataclass
class HostedStub:
    """Roboflow's API (key check, project) and hosted detection on one port."""

    project_type: str = "object-detection"
    has_model: bool = True
    requests: list[Recorded] = field(default_factory=list)
    failures: list[object] = field(default_factory=list)  # status int or "drop"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802
                stub.handle(self)

            def do_POST(self):  # noqa: N802
                stub.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        ).start()  # a short poll interval: shutdown() waits for one
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlparse(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        recorded = Recorded(request.command, url.path, query)
        with self.lock:
            self.requests.append(recorded)
        if query.get("api_key") != API_KEY:
            return self.reply(request, 401, {"error": "invalid api key"})
        if request.command == "POST" and url.path == "/":
            return self.reply(request, 200, {"workspace": "acme"})
        if request.command == "GET" and url.path == "/acme/cans":
            return self.reply(request, 200, self.project())
        if request.command == "POST" and url.path == "/cans/3":
            with self.lock:
                failure = self.failures.pop(0) if self.failures else None
            if failure == "drop":
                request.close_connection = True
                return  # no answer at all: the client sees a dropped connection
            if failure is not None:
                return self.reply(request, failure, {"message": "try again"})
            image = Image.open(io.BytesIO(base64.b64decode(body)))
            recorded.image_size = image.size
            floor = float(query["confidence"]) / 100  # as the server filters
            predictions = [
                p for p in _predictions(*image.size) if p["confidence"] >= floor
            ]
            return self.reply(
                request,
                200,
                {
                    "predictions": predictions,
                    "image": {"width": image.width, "height": image.height},
                },
            )
        return self.reply(request, 404, {"error": f"no route {url.path}"})

    def reply(self, request, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        if status == 429:
            request.send_header("Retry-After", "0")
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def project(self) -> dict:
        version = {
            "id": "acme/cans/3",
            "name": "cans",
            "augmentation": {},
            "created": 1700000000,
            "images": 120,
            "preprocessing": {"resize": {"format": "Stretch to", "width": 640}},
            "splits": {"train": 100, "valid": 20},
            "model": {"id": "cans/3", "map": 61.2} if self.has_model else None,
        }
        return {
            "workspace": {"name": "Acme", "url": "acme"},
            "project": {
                "id": "acme/cans",
                "name": "cans",
                "type": self.project_type,
                "annotation": "cans",
                "classes": {"can": 310, "person": 52, "dog": 3},
                "colors": {},
                "created": 1700000000,
                "updated": 1700000100,
                "images": 120,
                "unannotated": 0,
                "public": False,
                "splits": {"train": 100, "valid": 20},
            },
            "versions": [version],
        }

    def paths(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]


@pytest.fixture
def stub(monkeypatch, tmp_path):
    import roboflow.config

    server = HostedStub()
    url = server.start()
    monkeypatch.setenv("API_URL", url)
    monkeypatch.setenv("OBJECT_DETECTION_URL", url)
    monkeypatch.setenv("ROBOFLOW_API_KEY", API_KEY)
    monkeypatch.setenv("ROBOFLOW_CONFIG_DIR", str(tmp_path / "no-roboflow-config"))
    roboflow.config.refresh_region_urls()
    yield server
    server.stop()
    monkeypatch.delenv("API_URL")
    monkeypatch.delenv("OBJECT_DETECTION_URL")
    roboflow.config.refresh_region_urls()


@pytest.fixture
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (140, 100, 3), dtype=np.uint8)),
    ]


def _load(**options) -> RoboflowHostedModel:
    options = {"dataset": DATASET, "class_map": CLASS_MAP, "retry": FAST, **options}
    return RoboflowHostedModel.load(
        ModelSpec(backend="roboflow", model=options.pop("model", MODEL)), **options
    )


def test_requests_and_mapped_detections(stub, images, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    model = _load()
    assert stub.paths() == OPENED

    detections = model.predict(images, ONTOLOGY, confidence_floor=0.305)

    inference = [r for r in stub.requests if r.path == "/cans/3"]
    assert sorted(r.image_size for r in inference) == sorted(i.size for i in images)
    for request in inference:
        assert request.query["api_key"] == API_KEY
        assert request.query["confidence"] == "30"  # whole percent, rounded down
        assert request.query["overlap"] == "50"
        assert request.query["format"] == "json"
    for image, found in zip(images, detections, strict=True):
        width, height = image.size
        np.testing.assert_allclose(
            found.xyxy,
            [
                [40, 35, 60, 45],
                [0, 0, 30, 25],
                [width - 15, height - 15, width, height],
            ],
        )
        np.testing.assert_allclose(found.confidence, [0.9, 0.5, 0.4])
        assert found.class_id.tolist() == [1, 0, 0]
        assert found.data["class_name"].tolist() == ["soda", "Person", "Person"]
        assert found.data["prompt"].tolist() == ["can", "person", "Person"]
    _assert_no_key(capsys, caplog, repr(model), str(model))


@pytest.mark.parametrize(
    ("model", "dataset", "message"),
    [
        (
            "roboflow://acme/other/3",
            DATASET,
            "trained on acme/other, but this run labels acme/cans",
        ),
        (
            "roboflow://rival/cans/3",
            DATASET,
            "trained on rival/cans, but this run labels acme/cans",
        ),
        (MODEL, None, "labels only its own project's images"),
        (MODEL, "/data/images", "expected roboflow://"),
        (MODEL, "roboflow://acme", "expected roboflow://WORKSPACE/PROJECT"),
        ("roboflow://acme/cans", DATASET, "WORKSPACE/PROJECT/VERSION"),
        ("roboflow://acme/cans/v3", DATASET, "VERSION a number"),
    ],
)
def test_models_of_another_dataset_are_refused_before_any_request(
    stub, model, dataset, message
):
    with pytest.raises(ModelLoadError, match=message):
        _load(model=model, dataset=dataset)
    assert stub.requests == []


@pytest.mark.parametrize(
    "dataset",
    [
        "roboflow://acme/cans/1",  # an older version than the model's
        "roboflow://acme/cans/3",
        "roboflow://acme/cans/",
        "roboflow://ACME/Cans",  # identities compare without case
    ],
)
def test_the_version_of_the_labeled_dataset_is_accepted(stub, dataset):
    """Any version of the same project; the dataset may name a version too. Accepted
    means opened: the model is the one asked for, and the API was asked for it."""
    model = _load(dataset=dataset)
    assert model.ref == RoboflowModelRef("acme", "cans", 3)
    assert stub.paths() == OPENED


@pytest.mark.parametrize(
    ("failures", "attempts"),
    [
        ([503], 2),
        ([503, 429, 502], 4),  # 429 answers Retry-After: 0
        (["drop", 500], 3),  # a dropped connection is retried too
    ],
)
def test_retryable_failures_are_retried(stub, images, caplog, failures, attempts):
    model = _load()
    stub.failures.extend(failures)
    (found,) = model.predict(images[:1], ONTOLOGY, confidence_floor=0.305)
    assert len(found) == 3
    assert sum(r.path == "/cans/3" for r in stub.requests) == attempts
    assert "retrying" in caplog.text


def test_retries_are_bounded_and_errors_carry_no_key(stub, images, capsys, caplog):
    model = _load()
    stub.failures.extend([503] * 10)
    with pytest.raises(HostedInferenceError, match="HTTP 503") as error:
        model.predict(images[:1], ONTOLOGY, confidence_floor=0.3)
    assert sum(r.path == "/cans/3" for r in stub.requests) == FAST.attempts
    assert "after 4 attempts" in str(error.value)
    assert error.value.__cause__ is None and error.value.__context__ is None
    _assert_no_key(capsys, caplog, str(error.value), repr(error.value))


def test_client_errors_are_not_retried(stub, images, capsys, caplog):
    model = _load()
    stub.failures.append(403)
    with pytest.raises(HostedInferenceError, match="HTTP 403") as error:
        model.predict(images[:1], ONTOLOGY, confidence_floor=0.3)
    assert sum(r.path == "/cans/3" for r in stub.requests) == 1
    _assert_no_key(capsys, caplog, str(error.value))


def test_an_unreachable_api_fails_after_bounded_retries(stub, capsys, caplog):
    stub.stop()  # nothing listens on its port any more: connections are refused
    with pytest.raises(ModelLoadError, match="after 4 attempts: ConnectionError"):
        _load()
    assert caplog.text.count("retrying") == FAST.attempts - 1
    _assert_no_key(capsys, caplog)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda s, mp: setattr(s, "has_model", False), "has no trained model"),
        (lambda s, mp: setattr(s, "project_type", "classification"), "project type"),
        (lambda s, mp: mp.setenv("ROBOFLOW_API_KEY", "wrongkey"), "invalid api key"),
        (lambda s, mp: _no_key_anywhere(mp), "no Roboflow API key"),
    ],
)
def test_unusable_models_are_refused_clearly(
    stub, monkeypatch, capsys, caplog, setup, message
):
    setup(stub, monkeypatch)
    with pytest.raises(ModelLoadError, match=message) as error:
        _load()
    assert "\n" not in str(error.value)
    _assert_no_key(capsys, caplog, str(error.value))


def _no_key_anywhere(monkeypatch) -> None:
    monkeypatch.delenv("ROBOFLOW_API_KEY")
    monkeypatch.setattr("prefect.blocks.system.Secret.load", _no_block)


def _no_block(*args, **kwargs):
    raise ValueError("no such block")


def test_the_api_key_comes_from_the_prefect_secret_block(
    stub, images, monkeypatch, capsys, caplog
):
    """As for a Roboflow source or upload: no ROBOFLOW_API_KEY, the key in the Prefect
    Secret block ``roboflow-api-key``, and every request carries it."""
    from prefect.blocks.system import Secret

    loaded = []

    def load(name, *args, **kwargs):
        loaded.append(name)
        return Secret(value=API_KEY)

    monkeypatch.delenv("ROBOFLOW_API_KEY")
    monkeypatch.setattr("prefect.blocks.system.Secret.load", load)
    caplog.set_level(logging.DEBUG)

    model = _load()
    (found,) = model.predict(images[:1], ONTOLOGY, confidence_floor=0.305)

    assert loaded == ["roboflow-api-key"]
    assert len(found) == 3
    assert stub.paths() == [*OPENED, ("POST", "/cans/3")]
    assert {r.query["api_key"] for r in stub.requests} == {API_KEY}
    _assert_no_key(capsys, caplog, repr(model))


def test_label_chunk_labels_with_the_hosted_model(
    stub, sample_photos, tmp_path, monkeypatch, capsys, caplog
):
    """Batch labeling through the model cache and the registry, with a per-class
    threshold; labels name the model, never the key."""
    cache.clear()
    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(
            backend="roboflow",
            model=MODEL,
            dataset=DATASET,
            class_map=CLASS_MAP,
            batch_size=2,
        ),
        thresholds=Thresholds(default=0.31, per_class={"Person": 0.45}),
        nms="none",
    )
    out = tmp_path / "out"
    try:
        for chunk in plan_chunks(str(sample_photos), settings):
            label_chunk(chunk, settings, str(out), "run-1")
    finally:
        cache.clear()
    labels = read_labels(OutputLayout(out))

    assert len(labels) == 4 * 2  # per photo: the can at 0.9, the person at 0.5
    assert sorted(
        set(
            zip(
                labels["class_name"],
                labels["prompt"],
                labels["confidence"],
                strict=True,
            )
        )
    ) == [
        ("Person", "person", pytest.approx(0.5)),
        ("soda", "can", pytest.approx(0.9)),
    ]
    assert set(labels["model"]) == {MODEL}
    assert sum(r.path == "/cans/3" for r in stub.requests) == 4
    _assert_no_key(capsys, caplog, labels.to_csv())


def _assert_no_key(capsys, caplog, *texts: str) -> None:
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text, *texts):
        assert API_KEY not in text
