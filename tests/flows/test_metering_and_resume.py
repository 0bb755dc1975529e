"""Credits, budgets and crash-safe resumes through the real flow and CLI: a run stopped
by its budget keeps what it labeled; a run killed with SIGKILL and rerun labels and
charges every image exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tasks.credits import CreditLedger
from tasks.labels import OutputLayout, read_images, read_labels

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def _label_args(source: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        "label", str(source), "--out", str(out), "--model", model, "--device", "cpu",
        "--class", "person", "--class", "rocket", "--threshold", "0.3", *extra,
    ]  # fmt: skip


def test_a_budget_stops_the_run_before_labeling_more_and_keeps_what_it_did(
    tiny_grounding_dino, sample_photos, tmp_path
):
    out = tmp_path / "out"
    # 4 images at 0.01 credits each in chunks of 2: a 0.03 budget pays for one chunk
    # only.
    args = _label_args(sample_photos, out, tiny_grounding_dino, "--chunk-size", "2")
    stopped = runner.invoke(app, [*args, "--max-credits", "0.03"])

    assert stopped.exit_code == 4, stopped.output
    assert (
        "stopped before labeling more: budget 0.03 credits: used 0.02" in stopped.output
    )
    assert "left 0.01" in stopped.output
    assert len(read_images(OutputLayout(out))) == 2  # the first chunk is kept
    assert (out / "coco" / "train" / "_annotations.coco.json").is_file()  # and exported
    assert "Stopped by the budget" in (out / "report.md").read_text()
    ledger = CreditLedger(out / "credits.sqlite")
    assert ledger.used() == pytest.approx(0.02)

    resumed = runner.invoke(app, [*args, "--max-credits", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert len(read_images(OutputLayout(out))) == 4
    assert ledger.used() == pytest.approx(
        0.04
    )  # the first two images were not recharged
    assert len(ledger.rows()) == 4

    listing = runner.invoke(app, ["credits", "--out", str(out)])
    assert listing.exit_code == 0
    assert "Total: 0.04 credits" in listing.output
    assert str(sample_photos.resolve()) in listing.output


class _DuplicatingModel:
    """The real model, but every detection comes out twice: near duplicates to catch."""

    def __init__(self, model):
        self.model = model

    def predict(self, images, ontology, *, confidence_floor):
        import supervision as sv

        found = self.model.predict(images, ontology, confidence_floor=confidence_floor)
        return [sv.Detections.merge([d, d]) for d in found]


def test_quality_fail_policy_fails_the_run_after_writing_everything(
    tiny_grounding_dino, sample_photos, tmp_path, monkeypatch
):
    from model_loaders.cache import get_model

    monkeypatch.setattr(
        "tasks.label.get_model", lambda spec: _DuplicatingModel(get_model(spec))
    )
    out = tmp_path / "out"
    args = _label_args(sample_photos, out, tiny_grounding_dino, "--nms", "none")
    result = runner.invoke(app, [*args, "--quality", "fail"])
    assert result.exit_code == 5, result.output
    assert "label quality checks failed: no_near_duplicates" in result.output
    assert "no_near_duplicates" in (out / "quality.md").read_text()
    assert (out / "report.md").is_file() and (out / "yolo" / "data.yaml").is_file()

    warned = runner.invoke(app, [*args, "--quality", "warn"])
    assert warned.exit_code == 0, warned.output
    assert "Quality: failed no_near_duplicates" in (out / "report.md").read_text()


def _forty_images(folder: Path, photos: Path) -> None:
    folder.mkdir()
    sources = sorted(photos.glob("*.jpg"))
    for i in range(40):
        with Image.open(sources[i % len(sources)]) as image:
            image.rotate(i * 9).save(folder / f"img{i:02d}.jpg", quality=85)


def test_a_killed_run_resumes_labeling_and_charging_each_image_exactly_once(
    tiny_grounding_dino, sample_photos, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    source, out = tmp_path / "forty", tmp_path / "out"
    _forty_images(source, sample_photos)
    args = _label_args(source, out, tiny_grounding_dino, "--chunk-size", "2")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "images").glob("chunk-*.parquet"))) < 3:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished_before = len(list((out / "images").glob("chunk-*.parquet")))
    assert 3 <= finished_before < 20  # killed mid-run

    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output

    layout = OutputLayout(out)
    images = read_images(layout)
    assert sorted(images["relative_path"]) == [f"img{i:02d}.jpg" for i in range(40)]
    # Exactly the labels of one uninterrupted run: nothing lost, nothing twice.
    clean = tmp_path / "clean"
    assert (
        runner.invoke(
            app, _label_args(source, clean, tiny_grounding_dino, "--chunk-size", "2")
        ).exit_code
        == 0
    )
    columns = [
        "source_uri",
        "class_name",
        "confidence",
        "x_min",
        "y_min",
        "x_max",
        "y_max",
    ]
    resumed = read_labels(layout)[columns].sort_values(columns).reset_index(drop=True)
    expected = read_labels(OutputLayout(clean))[columns].sort_values(columns)
    pd.testing.assert_frame_equal(resumed, expected.reset_index(drop=True))
    ledger = CreditLedger(out / "credits.sqlite")
    charges = ledger.rows()
    assert len(charges) == 40 and charges["image_id"].is_unique
    assert ledger.used() == pytest.approx(0.40)
