"""The review page in a real browser: Debian's Chromium driven by Playwright.

``autolabel ui`` runs as a user starts it (a subprocess, on 127.0.0.1, any free port)
with a tiny random Grounding DINO and the session's Prefect test server. One page goes
through what a user does, test by test and in order: generate test results, move
sliders, click thumbnails, approve and watch the batch finish, train a model on the
batch and pick it as the labeler. A test that needs earlier results asks for them with
a fixture (``cat_person_results``, ``approved_batch``), which makes them only when no
earlier test did, so each test also runs alone (``-k``).

A screenshot of the page with results is saved to ``test-artifacts/review-page.png``
(``AUTOLABEL_TEST_ARTIFACTS`` moves it); the README shows a copy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tasks.approval import approved_path, load_approved
from tasks.credits import CreditLedger
from tasks.labels import OutputLayout, read_labels
from tasks.preview import (
    PreviewError,
    class_counts,
    filter_candidates,
    load_record,
    read_candidates,
)
from tasks.preview_truth import attach_truth, truth_scores
from tasks.thresholds import Thresholds
from tests.photos import write_sample_photos
from tests.review_ui.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.tasks.training.synthetic import save_tiny_rt_detr
from tests.truth_from_candidates import coco_truth, right_cats

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AUTOLABEL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SLOW = 180_000  # ms: a model run on a loaded 2-core machine


@dataclass
class Served:
    url: str
    photos: Path
    out: Path
    model: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def served(
    prefect_harness,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_grounding_dino: str,
    tiny_sam: str,
) -> Iterator[Served]:
    """``autolabel ui PHOTOS --class cat`` on 127.0.0.1 (6 photos, sample of 3)."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("review-page")
    photos, out = root / "photos", root / "out"
    write_sample_photos(photos)
    write_sample_photos(photos / "more", ("camera", "coins"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ui", str(photos), "--out", str(out),
         "--class", "cat", "--model", tiny_grounding_dino, "--device", "cpu",
         "--sam-checkpoint", tiny_sam, "--sam-model-type", "vit_tiny",
         "--sample", "3", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    match = re.match(r"Review page: (http://127\.0\.0\.1:\d+/)$", line.strip())
    assert match, f"unexpected first line from `autolabel ui`: {line!r}"
    yield Served(match.group(1), photos, out, tiny_grounding_dino, process)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served: Served):
    """One browser tab on the review page for the whole module."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium "
            "(scripts/install_browser.sh) or set AUTOLABEL_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS
        )
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(served.url)
        tab.wait_for_selector("body[data-ready]")
        yield tab
        assert not errors, errors
        browser.close()


def _fill_cat_and_person(page) -> None:
    """The form as a user edits it: 'cat' described, 'person' added."""
    page.locator("#classes tbody tr").nth(0).locator(".class-desc").fill("a cat")
    page.click("#add-class")
    row = page.locator("#classes tbody tr").nth(1)
    row.locator(".class-name").fill("person")
    row.locator(".class-desc").fill("a person; an astronaut")


def _has_cat_person_results(out: Path) -> bool:
    try:
        settings = load_record(out).settings
    except PreviewError:
        return False
    names = settings.ontology.class_names
    return settings.model.task == "detect" and names == ["cat", "person"]


@pytest.fixture(scope="module")
def cat_person_results(page, served: Served) -> None:
    """Detect test results for 'cat' and 'person', as test_generate_test_results
    makes them (made here only when it did not run first)."""
    if _has_cat_person_results(served.out):
        return
    page.reload()
    page.wait_for_selector("body[data-ready]")
    _fill_cat_and_person(page)
    page.click("#generate")
    page.wait_for_selector("#status:has-text('Test results ready')", timeout=SLOW)


@pytest.fixture(scope="module")
def approved_batch(served: Served, cat_person_results) -> None:
    """An approved, labeled batch, as test_approve_labels_the_batch_... leaves it
    (approved here through the API only when it did not run first)."""
    if approved_path(served.out).is_file():
        return
    approval = {"key": load_record(served.out).key, "thresholds": {"cat": 0.5}}
    started = httpx.post(f"{served.url}api/label", json=approval).json()
    deadline = time.monotonic() + SLOW / 1000
    while (job := httpx.get(f"{served.url}api/job").json())["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["id"] == started["id"] and job["state"] == "done", job


def _thresholds(page) -> dict[str, float]:
    return {
        row.get_attribute("data-class"): float(row.locator("input").input_value())
        for row in page.locator(".class-control").all()
    }


def _counts_on_page(page) -> dict[str, str]:
    return {
        row.get_attribute("data-class"): row.locator(".count").inner_text()
        for row in page.locator(".class-control").all()
    }


def _batch_view(out: Path, thresholds: dict[str, float]) -> pd.DataFrame:
    """What the batch keeps of the stored candidates at ``thresholds``."""
    settings = load_record(out).settings
    return filter_candidates(
        read_candidates(out),
        Thresholds(per_class=thresholds),
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=settings.ontology.class_names,
    )


def _expected_counts(out: Path, thresholds: dict[str, float]) -> dict[str, str]:
    shown = _batch_view(out, thresholds)
    names = load_record(out).settings.ontology.class_names
    counts = class_counts(read_candidates(out), shown, names)
    return {name: f"{kept}/{total}" for name, (kept, total) in counts.items()}


def _boxes_expected_on(page, out: Path, thresholds: dict[str, float]) -> int:
    name = page.locator("#image-name").inner_text()
    shown = _batch_view(out, thresholds)
    return int(shown["source_uri"].str.endswith("/" + name).sum())


def test_generate_test_results(page, served: Served):
    # The form starts from the command line; the user edits and adds a class.
    assert page.locator("#source").input_value() == str(served.photos)
    assert page.locator("#model").input_value() == served.model
    _fill_cat_and_person(page)

    page.click("#generate")
    page.wait_for_selector("#status:has-text('Test results ready')", timeout=SLOW)

    assert page.locator(".thumb").count() == 3
    record = load_record(served.out)
    assert [c.name for c in record.settings.ontology.classes] == ["cat", "person"]
    assert record.settings.ontology.classes[1].descriptions == (
        "a person",
        "an astronaut",
    )
    counts = _counts_on_page(page)
    assert counts == _expected_counts(served.out, _thresholds(page))
    assert all(re.fullmatch(r"\d+/\d+", text) for text in counts.values())
    assert page.locator("#free-note").inner_text() == "Test results cost 0 credits."
    assert page.locator("#overlay .box").count() == _boxes_expected_on(
        page, served.out, _thresholds(page)
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)


def test_sliders_refilter_in_the_browser_like_the_batch(
    page, served: Served, cat_person_results
):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    scores = sorted(read_candidates(served.out)["confidence"])
    floor = load_record(served.out).floor
    seen_boxes = set()
    for name in ("person", "cat"):
        slider = page.locator(f".class-control[data-class='{name}'] input")
        for value in (floor, round(scores[len(scores) // 2], 2), 1.0):
            slider.fill(str(value))
            thresholds = _thresholds(page)
            assert thresholds[name] == pytest.approx(value)
            assert _counts_on_page(page) == _expected_counts(served.out, thresholds)
            boxes = page.locator("#overlay .box").count()
            assert boxes == _boxes_expected_on(page, served.out, thresholds)
            seen_boxes.add(boxes)
    counts = _counts_on_page(page)
    assert counts["person"].startswith("0/") and counts["cat"].startswith("0/")
    assert len(seen_boxes) >= 3  # boxes appeared and disappeared
    assert not [url for url in requests if "/api/" in url]  # no round trip at all


def test_thumbnail_click_shows_that_image_at_once(
    page, served: Served, cat_person_results
):
    page.locator(".class-control[data-class='person'] input").fill("0.05")
    for index in (2, 1, 0):
        elapsed_ms, src = page.evaluate(
            """async (index) => {
                const main = document.querySelector('#main-image');
                const start = performance.now();
                document.querySelector(`.thumb[data-index="${index}"]`).click();
                await main.decode();
                return [performance.now() - start, main.currentSrc];
            }""",
            index,
        )
        assert f"/api/preview/images/{index}?" in src
        assert elapsed_ms < 200, f"thumbnail {index} took {elapsed_ms:.0f} ms"
        expected = _boxes_expected_on(page, served.out, _thresholds(page))
        assert page.locator("#overlay .box").count() == expected
        name = page.locator(f".thumb[data-index='{index}']").get_attribute("title")
        assert page.locator("#image-name").inner_text() == name


def _scores_on_page(page, name: str) -> list[float | None]:
    """The P, R and F1 a class's row shows (None for n/a)."""
    text = page.locator(f".class-control[data-class='{name}'] .prf").inner_text()
    match = re.match(r"P (\S+) R (\S+) F1 (\S+)", text)
    assert match, text
    return [None if v == "n/a" else float(v) for v in match.groups()]


def _expected_scores(out: Path, name: str, thresholds: dict[str, float]) -> list:
    settings = load_record(out).settings
    settings = settings.model_copy(
        update={"thresholds": Thresholds(per_class=thresholds)}
    )
    score = truth_scores(out, settings)[name]
    return [score.precision, score.recall, score.f1]


def test_human_labels_give_scores_that_follow_the_sliders(
    page, served: Served, cat_person_results, tmp_path: Path
):
    cats, right, best, _ = right_cats(served.out)
    attach_truth(served.out, str(coco_truth(tmp_path, served.out, right)))
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#suggest").is_visible()
    assert (
        "no labeled instances"
        in page.locator(".class-control[data-class='person'] .prf").inner_text()
    )

    seen = set()
    slider = page.locator(".class-control[data-class='cat'] input")
    for value in (0.05, round(best, 2), 1.0):
        slider.fill(str(value))
        shown = _scores_on_page(page, "cat")
        expected = _expected_scores(served.out, "cat", _thresholds(page))
        for got, want in zip(shown, expected, strict=True):
            assert got == (None if want is None else pytest.approx(want, abs=0.006))
        seen.add(tuple(shown))
    assert len(seen) >= 2  # the numbers moved with the slider
    assert _scores_on_page(page, "cat")[1] < 1  # at 1.0 some cats are missed

    page.click("#suggest")
    assert _scores_on_page(page, "cat") == [1.0, 1.0, 1.0]
    assert "person" in page.locator("#truth-note").inner_text()
    assert (
        f"best {best:.3f}"
        in page.locator(".class-control[data-class='cat'] .prf").inner_text()
    )


def test_approve_labels_the_batch_with_the_chosen_thresholds(page, served: Served):
    chosen = {"cat": 0.5, "person": 0.9}
    for name, value in chosen.items():
        page.locator(f".class-control[data-class='{name}'] input").fill(str(value))
    shown_on_sample = _counts_on_page(page)

    page.click("#auto-label")
    dialog = page.locator("#confirm")
    assert dialog.is_visible()
    assert dialog.locator("#confirm-images").inner_text().startswith("6 images")
    assert dialog.locator("#confirm-credits").inner_text().startswith("at most 0.06")
    for name, value in chosen.items():
        row = dialog.locator(f"#confirm-classes tr[data-class='{name}']")
        assert row.locator(".threshold").inner_text() == f"{value:.2f}"
    dialog.locator("#confirm-start").click()
    page.wait_for_selector("#batch-result:visible", timeout=SLOW)

    assert page.locator("#batch-summary").inner_text().startswith("Labeled 6 of 6")
    assert page.locator("#batch-credits").inner_text() == "0.06"
    assert "# Auto-label report" in page.locator("#batch-report").inner_text()
    approved = load_approved(served.out)
    assert approved.approved_by.endswith("(review page)")
    names = approved.settings.ontology.class_names
    assert {n: approved.settings.thresholds.for_class(n) for n in names} == chosen
    # the preview had human labels: approved.json says what the thresholds reached
    assert approved.truth is not None
    assert not approved.truth.classes["cat"].from_truth  # 0.5 was picked by hand
    assert approved.truth.classes["person"].reason == "no labeled instances"

    labels = read_labels(OutputLayout(served.out))
    assert len(labels) and set(labels["class_name"]) <= set(chosen)
    for name, value in chosen.items():
        assert (labels.loc[labels["class_name"] == name, "confidence"] >= value).all()
    sample = labels[
        labels["source_uri"].isin(read_candidates(served.out)["source_uri"])
    ]
    for name, text in shown_on_sample.items():
        assert int(text.split("/")[0]) == int((sample["class_name"] == name).sum())
    ledger = CreditLedger(served.out / "credits.sqlite")
    assert ledger.used() == pytest.approx(0.06)


def test_the_page_reopens_with_its_approved_results(page, served: Served):
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".thumb").count() == 3
    # The form starts from the command line (--class cat); the results are the stored
    # ones, at the approved thresholds.
    assert page.locator("#classes tbody tr").count() == 1
    assert _thresholds(page) == {"cat": 0.5, "person": 0.9}
    assert _counts_on_page(page) == _expected_counts(served.out, _thresholds(page))


def _generate(page, out: Path, task: str, model: str | None = None) -> None:
    """Pick ``task`` (and ``model``), generate, wait for the new results."""
    page.locator("#status").evaluate("status => status.textContent = ''")
    page.select_option("#task", task)
    if model is not None:
        page.locator("#model").fill(model)
    page.click("#generate")
    page.wait_for_selector("#status:has-text('Test results ready')", timeout=SLOW)
    assert load_record(out).settings.model.task == task


def test_segment_results_draw_masks(page, served: Served):
    _generate(page, served.out, "segment")
    thresholds = _thresholds(page)
    assert _counts_on_page(page) == _expected_counts(served.out, thresholds)
    expected = _boxes_expected_on(page, served.out, thresholds)
    assert expected > 0
    assert page.locator("#overlay .box").count() == expected
    # Every drawn label has its mask outline (SAM gives each box a mask).
    assert page.locator("#overlay g.label:has(polygon.mask)").count() == expected


def test_classification_results_show_labels_not_boxes(
    page, served: Served, tiny_clip: str
):
    page.click("#add-class")  # the reloaded form has the command line's class only
    page.locator("#classes tbody tr").nth(1).locator(".class-name").fill("person")
    _generate(page, served.out, "classify-multi", tiny_clip)
    for name in ("cat", "person"):
        page.locator(f".class-control[data-class='{name}'] input").fill("0.05")
    thresholds = _thresholds(page)
    assert _counts_on_page(page) == _expected_counts(served.out, thresholds)
    assert page.locator("#overlay .box").count() == 0
    chips = page.locator("#image-labels .chip")
    assert chips.count() == _boxes_expected_on(page, served.out, thresholds) > 0


def test_train_a_model_on_the_batch_and_pick_it_as_the_labeler(
    page, served: Served, approved_batch, tmp_path: Path
):
    base = save_tiny_rt_detr(tmp_path / "tiny-rt-detr")
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#train").is_visible()
    assert page.locator("#trained-models").is_hidden()  # nothing trained yet
    assert page.locator("#train-epochs").input_value() == "20"  # autolabel train's

    page.locator("#train-base").fill(base)
    page.locator("#train-name").fill("../cats")
    page.click("#train-start")
    status = page.locator("#train-status.error")
    status.wait_for()
    assert status.inner_text().startswith("model name '../cats': ")
    assert not (served.out / "cats").exists()

    page.locator("#train-name").fill("cats-v1")
    page.locator("#train-epochs").fill("1")
    page.locator("#train-batch-size").fill("2")
    page.locator("#train-split").fill("train=0.5,val=0.5")  # 6 photos: 4 train, 2 val
    page.click("#train-start")
    page.wait_for_selector("#train-status:has-text('Trained cats-v1')", timeout=SLOW)
    bar = page.locator("#train-progress")
    assert bar.get_attribute("max") == bar.evaluate("bar => String(bar.value)") == "1"

    folder = (served.out / "models" / "cats-v1").resolve()
    assert (folder / "training.json").is_file()
    assert page.locator("#trained-models").is_visible()
    offered = page.locator("#trained-model option:not([value=''])")
    assert offered.count() == 1
    text = offered.inner_text()
    assert text.startswith("cats-v1 · detect · cat, person · val mAP@0.5 "), text
    page.select_option("#trained-model", str(folder))
    assert page.locator("#model").input_value() == str(folder)
    assert page.locator("#task").input_value() == "detect"
    assert "Trained on cat, person" in page.locator("#trained-model-note").inner_text()
