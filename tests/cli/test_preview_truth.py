"""``autolabel preview --truth``: each class's precision/recall/F1 on the sample's
labeled images and its F1-optimal threshold, re-filtered without the model, and
``--threshold auto`` setting each class to it (or keeping its threshold, said)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.approval import load_approved
from tasks.labels import OutputLayout, read_labels
from tasks.preview import load_record, plan_sample, run_preview
from tasks.settings import LabelSettings
from tests.truth_from_candidates import coco_truth, kept_at_floor, right_cats

runner = CliRunner()


@pytest.fixture(scope="module")
def previewed(tmp_path_factory, tiny_grounding_dino: str, shared_sample_photos):
    """A real preview (tiny model, floor 0.05, no Prefect) of the four photos."""
    out = tmp_path_factory.mktemp("preview-truth") / "out"
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["cat", "person"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
    )
    refs = plan_sample(str(shared_sample_photos), str(out), size=4, seed=0)
    run_preview(
        str(shared_sample_photos), refs, settings, str(out), run_id="t", seed=0,
        sample_size=4,
    )  # fmt: skip
    return out


def test_preview_truth_shows_scores_and_auto_takes_the_f1_optimal_threshold(
    previewed: Path, tmp_path: Path
):
    # The truth: exactly the cats scoring at least a middle score: F1 1 there.
    cats, right, best, higher = right_cats(previewed)
    truth = coco_truth(tmp_path, previewed, right)

    shown = runner.invoke(
        app, ["preview", "--from", str(previewed), "--truth", str(truth),
              "--threshold", "0.05"],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "F1-optimal threshold" in shown.output  # the console's table
    summary = (previewed / "preview" / "summary.md").read_text()
    precision = len(right) / len(cats)  # at 0.05 every cat is kept; recall 1
    f1 = 2 * len(right) / (len(cats) + len(right))
    assert (
        f"| cat | 0.05 | {precision:.3f} | 1.000 | {f1:.3f} | {best:g} (F1 1.000) |"
        in summary
    )
    assert "| person | 0.05 | 0.000 | n/a | 0.000 | keeps 0.05: no labeled" in summary
    assert "| keeps 0.05: no labeled instances |" in summary

    auto = runner.invoke(
        app, ["preview", "--from", str(previewed), "--threshold", "auto"]
    )
    assert auto.exit_code == 0, auto.output
    assert f"--threshold auto: cat = {best:g} (F1 1.000" in auto.output
    assert "--threshold auto: person keeps 0.05: no labeled instances" in " ".join(
        auto.output.split()
    )
    stored = load_record(previewed).settings.thresholds
    assert stored.for_class("cat") == best
    assert stored.for_class("cat") < higher
    assert stored.for_class("person") == 0.05
    summary = (previewed / "preview" / "summary.md").read_text()
    assert f"| cat | {best:g} | 1.000 | 1.000 | 1.000 | {best:g} (F1 1.000) |" in (
        summary
    )

    # Re-filtering at another threshold updates the scores without the truth file.
    truth.unlink()
    found = int((cats["confidence"] >= higher).sum())
    recall = found / len(right)
    again = runner.invoke(
        app, ["preview", "--from", str(previewed), "--threshold", f"cat={higher!r}"]
    )
    assert again.exit_code == 0, again.output
    # no false positive, fewer found
    summary = (previewed / "preview" / "summary.md").read_text()
    f1 = 2 * found / (found + len(right))
    assert (
        f"| cat | {higher:g} | 1.000 | {recall:.3f} | {f1:.3f} | {best:g} (F1 1.000) |"
        in summary
    )
    assert recall < 1


def test_auto_without_truth_and_bad_truth_maps_are_refused(
    previewed: Path, tmp_path: Path
):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "preview").mkdir()
    for name in ("sample.json", "candidates.parquet", "manifest.parquet"):
        (bare / "preview" / name).write_bytes(
            (previewed / "preview" / name).read_bytes()
        )
    record = json.loads((bare / "preview" / "sample.json").read_text())
    record["truth"] = None
    (bare / "preview" / "sample.json").write_text(json.dumps(record))
    refused = runner.invoke(
        app, ["preview", "--from", str(bare), "--threshold", "auto"]
    )
    assert refused.exit_code == 2
    assert "--threshold auto needs human labels" in refused.output

    truth = coco_truth(
        tmp_path / "t", previewed, kept_at_floor(previewed, "cat").head(1)
    )
    bad_map = runner.invoke(
        app, ["preview", "--from", str(bare), "--truth", str(truth),
              "--truth-map", "dog=cat"],
    )  # fmt: skip
    assert bad_map.exit_code == 2
    assert "--map names ['dog']" in bad_map.output
    missing = runner.invoke(
        app, ["preview", "--from", str(bare), "--truth", str(tmp_path / "nope.json")]
    )
    assert missing.exit_code == 1
    assert "no such file or folder" in missing.output


@pytest.mark.usefixtures("prefect_harness")
def test_run_threshold_auto_approves_the_tuned_thresholds_and_records_them(
    tmp_path: Path, tiny_grounding_dino: str, shared_sample_photos: Path
):
    out = tmp_path / "out"
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["cat", "person"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
    )
    refs = plan_sample(str(shared_sample_photos), str(out), size=4, seed=0)
    run_preview(
        str(shared_sample_photos), refs, settings, str(out), run_id="t", seed=0,
        sample_size=4,
    )  # fmt: skip
    _, right, best, _ = right_cats(out)
    truth = coco_truth(tmp_path / "truth", out, right)

    result = runner.invoke(
        app, ["run", str(shared_sample_photos), "--out", str(out), "--class", "cat",
              "--class", "person", "--model", tiny_grounding_dino, "--device", "cpu",
              "--truth", str(truth), "--threshold", "auto", "--threshold", "0.3",
              "--approve"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--threshold auto: cat = " in result.output
    approved = load_approved(out)
    assert approved.settings.thresholds.for_class("cat") == best
    assert approved.settings.thresholds.for_class("person") == 0.3
    assert approved.truth is not None
    cat, person = approved.truth.classes["cat"], approved.truth.classes["person"]
    assert cat.from_truth and (cat.precision, cat.recall, cat.f1) == (1, 1, 1)
    assert cat.truth == len(right)
    assert not person.from_truth and person.reason == "no labeled instances"
    # `label --threshold auto` takes the same thresholds from the preview in OUT.
    labeled = runner.invoke(
        app, ["label", str(shared_sample_photos), "--out", str(out), "--class", "cat",
              "--class", "person", "--model", tiny_grounding_dino, "--device", "cpu",
              "--threshold", "0.3", "--threshold", "auto"],
    )  # fmt: skip
    assert labeled.exit_code == 0, labeled.output
    assert f"--threshold auto: cat = {best:g}" in labeled.output
    labels = read_labels(OutputLayout(out))
    cats = labels[labels["class_name"] == "cat"]
    assert len(cats) == len(right) and (cats["confidence"] >= best).all()


def test_label_threshold_auto_needs_a_preview_with_truth(
    tmp_path: Path, shared_sample_photos: Path, monkeypatch
):
    def refuse(spec):
        raise AssertionError("a model was loaded although the options were invalid")

    monkeypatch.setattr("model_loaders.cache.get_model", refuse)
    result = runner.invoke(
        app, ["label", str(shared_sample_photos), "--out", str(tmp_path / "o"),
              "--class", "cat", "--threshold", "auto"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no preview in" in result.output
