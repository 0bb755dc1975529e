"""The review page trains a model on its labeled batch and offers it as a labeler.

Through the real app (FastAPI's TestClient): a batch is approved and labeled with a
tiny random Grounding DINO, a tiny random RT-DETR trains one epoch on it into
``OUT/models/<name>`` (the real ``train-detector`` flow, charged to the page's ledger),
``/api/models`` lists it with its classes and val metrics, and test results are then
generated with it. Bad requests get one line and run nothing.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from review_ui.app import create_app
from review_ui.jobs import ReviewSession
from tasks.credits import CreditLedger, CreditRates
from tasks.preview import load_record
from tasks.training.data import read_training_data
from tests.model_loaders.conftest import one_torch_thread  # noqa: F401 - fixture
from tests.review_ui.conftest import LOCAL
from tests.tasks.training.synthetic import save_tiny_rt_detr, save_tiny_vit_classifier

pytestmark = pytest.mark.usefixtures("prefect_harness", "one_torch_thread")
SPLIT = "train=0.3,val=0.7"  # 4 photos: 2 train, 2 val (by content hash)


def _finished(client: TestClient, started: dict) -> dict:
    """Poll the job until it ends; every progress report seen on the way."""
    assert started["state"] == "running", started
    deadline = time.monotonic() + 300
    while (job := client.get("/api/job").json())["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["id"] == started["id"] and job["state"] == "done", job
    return job


@pytest.fixture(scope="module")
def labeled_out(previewed_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the previewed folder whose batch was approved and labeled through
    the page, at the lowest threshold (every candidate a label)."""
    out = tmp_path_factory.mktemp("review-training") / "out"
    shutil.copytree(previewed_out, out)
    client = TestClient(create_app(ReviewSession(out)), base_url=LOCAL)
    record = load_record(out)
    approval = {"key": record.key, "thresholds": {"cat": record.floor}}
    _finished(client, client.post("/api/label", json=approval).json())
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_rt_detr(tmp_path_factory.mktemp("tiny-rt-detr"))


def test_trains_on_the_batch_offers_the_model_and_labels_with_it(
    labeled_out: Path, tiny_base: str
):
    client = TestClient(create_app(ReviewSession(labeled_out)), base_url=LOCAL)
    state = client.get("/api/state").json()
    assert state["training"]["ready"] and state["models"] == []
    assert state["training"]["defaults"]["epochs"] == 20  # autolabel train's
    ledger = CreditLedger(labeled_out / "credits.sqlite")
    labeled_credits = ledger.used()
    train_images = len(read_training_data(labeled_out, SPLIT).train)

    ask = {"base": tiny_base, "name": "cats-v1", "epochs": 1, "batch_size": 2}
    started = client.post("/api/train", json={**ask, "split": SPLIT}).json()
    assert started["kind"] == "train"
    job = _finished(client, started)
    # The flow's per-step progress moved the job: every train image of the epoch.
    assert job["total"] == train_images and job["done"] == train_images
    assert job["result"]["trained_now"] == [1]

    folder = (labeled_out / "models" / "cats-v1").resolve()
    record = json.loads((folder / "training.json").read_text())
    models = client.get("/api/models").json()
    assert [model["name"] for model in models] == ["cats-v1"]
    model = models[0]
    assert model["path"] == str(folder) and model["task"] == "detect"
    assert model["class_names"] == ["cat"] == record["class_names"]
    last = record["metrics"][-1]
    assert model["metrics"] == {k: last[k] for k in ("epoch", "map50", "map")}
    assert client.get("/api/state").json()["models"] == models
    # Charged to the page's ledger: each train image once, at the train rate.
    charged = ledger.used() - labeled_credits
    assert charged == pytest.approx(train_images * CreditRates().rate("train"))

    # The same name and settings again: found done, nothing trained or charged.
    again = _finished(
        client, client.post("/api/train", json={**ask, "split": SPLIT}).json()
    )
    assert again["result"]["already_trained"] and again["result"]["trained_now"] == []
    assert ledger.used() - labeled_credits == pytest.approx(charged)

    # "Generate test results" with the model picked from the list: its backend
    # follows the folder (no backend chosen).
    source = load_record(labeled_out).source
    preview = {
        "source": source,
        "classes": [{"name": "cat"}],
        "task": model["task"],
        "model": model["path"],
        "sample_size": 2,
    }
    _finished(client, client.post("/api/preview", json=preview).json())
    spec = load_record(labeled_out).settings.model
    assert spec.model == str(folder) and spec.backend == "trained"
    shown = client.get("/api/preview").json()
    assert shown["model"] == str(folder) and len(shown["images"]) == 2


def test_bad_training_requests_get_one_line_and_run_nothing(
    previewed_out: Path, labeled_out: Path, tiny_base: str, tmp_path: Path
):
    not_labeled = TestClient(create_app(ReviewSession(previewed_out)), base_url=LOCAL)
    refused = not_labeled.post("/api/train", json={"base": tiny_base})
    assert refused.status_code == 409
    assert "no labeled batch" in refused.json()["error"]

    session = ReviewSession(labeled_out)
    client = TestClient(create_app(session), base_url=LOCAL)
    models = labeled_out / "models"
    before = sorted(models.iterdir()) if models.is_dir() else []
    classifier = save_tiny_vit_classifier(tmp_path / "vit")
    cases = [
        ({"base": "  "}, "base model: required"),
        ({"base": tiny_base, "name": "../escaped"}, "model name '../escaped'"),
        ({"base": tiny_base, "name": "a/b"}, "no path separators"),
        ({"base": tiny_base, "name": ".."}, "model name '..'"),
        ({"base": tiny_base, "epochs": 0}, "epochs: Input should be greater"),
        ({"base": tiny_base, "split": "train=1.0"}, "needs a val split"),
        ({"base": classifier, "split": SPLIT}, "is an image classifier"),
        ({"base": str(tmp_path / "nothing-here"), "split": SPLIT}, "nothing-here"),
    ]
    refusals = 0
    for request, message in cases:
        response = client.post("/api/train", json=request)
        assert response.status_code == 400, (request, response.text)
        error = response.json()["error"]
        assert message in error and "\n" not in error, (request, error)
        refusals += 1
    assert refusals == 8
    assert session.job() is None
    assert (sorted(models.iterdir()) if models.is_dir() else []) == before
    assert not (labeled_out / "escaped").exists()

    # Another site's page, or a form, cannot start a training (it charges credits).
    other_site = client.post(
        "/api/train", json={"base": tiny_base}, headers={"origin": "http://evil.test"}
    )
    assert other_site.status_code == 403
    as_form = client.post(
        "/api/train",
        content="base=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert as_form.status_code == 415
    assert session.job() is None


def test_no_training_while_another_job_runs(
    labeled_out: Path, tiny_base: str, monkeypatch: pytest.MonkeyPatch
):
    import flows.preview

    release = threading.Event()
    monkeypatch.setattr(flows.preview, "preview", lambda **_: release.wait(30) and {})
    client = TestClient(create_app(ReviewSession(labeled_out)), base_url=LOCAL)
    ask = {"source": "x", "classes": [{"name": "cat"}]}
    assert client.post("/api/preview", json=ask).status_code == 200
    busy = client.post("/api/train", json={"base": tiny_base, "name": "while-busy"})
    release.set()
    deadline = time.monotonic() + 30
    while client.get("/api/job").json()["state"] == "running":  # let it end here
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert busy.status_code == 409 and "still going" in busy.json()["error"]
    assert not (labeled_out / "models" / "while-busy").exists()


def test_an_unnamed_training_resumes_its_own_folder_not_a_new_one(tmp_path: Path):
    """No name given: the base's name, skipping folders of other trainings, but the
    folder of this same training is reused, so "Train" again resumes it."""
    from review_ui.training import default_model_name
    from tasks.training.state import training_json_path

    ours, theirs = {"base": "b", "epochs": 3}, {"base": "b", "epochs": 9}
    models = tmp_path / "models"
    assert (
        default_model_name(tmp_path, "org/rtdetr_v2_r18vd", ours) == "rtdetr_v2_r18vd"
    )
    for name, fingerprint in (("rtdetr_v2_r18vd", theirs), ("rtdetr_v2_r18vd-2", ours)):
        training_json_path(models / name).parent.mkdir(parents=True, exist_ok=True)
        training_json_path(models / name).write_text(
            json.dumps({"fingerprint": fingerprint})
        )
    assert (
        default_model_name(tmp_path, "org/rtdetr_v2_r18vd", ours) == "rtdetr_v2_r18vd-2"
    )
    assert default_model_name(tmp_path, "org/rtdetr_v2_r18vd", {"base": "new"}) == (
        "rtdetr_v2_r18vd-3"
    )
