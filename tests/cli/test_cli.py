"""The `autolabel label` command: options are validated before any model loads, failures
are one clear line with a meaningful exit code, and a run produces the promised
files."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail loudly if anything tries to load a model."""

    def refuse(spec):
        raise AssertionError("a model was loaded although the options were invalid")

    monkeypatch.setattr("model_loaders.cache.get_model", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class", "cat", "--class", "cat"], "given twice"),
        (["--class", ": x"], "class name is empty"),
        (["--class", "cat", "--class", "kitten: cat"], "used for two classes"),
        (["--class", "cat", "--threshold", "dog=0.5"], "unknown class"),
        (["--class", "cat", "--threshold", "2"], "between 0 and 1"),
        (["--class", "cat", "--nms", "maybe"], "--nms 'maybe'"),
        (["--class", "cat", "--prompt-mode", "each"], "--prompt-mode 'each'"),
        ([], "no classes"),
        (["--class", "cat", "--split", "train=0.5"], "add up to 0.5"),
        (["--class", "cat", "--split", "train=0.8,dev=0.2"], "expected train=F"),
    ],
)
def test_invalid_options_exit_2_before_any_model_loads(
    no_model_load, sample_photos, args, message
):
    result = runner.invoke(app, ["label", str(sample_photos), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_unreachable_model_is_one_line_and_exit_1(sample_photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(
        app,
        ["label", str(sample_photos), "--class", "cat", "--model", "someone/missing"],
    )
    assert result.exit_code == 1
    assert "not in the local Hugging Face cache" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_label_writes_every_output_and_exit_3_when_files_were_skipped(
    tiny_grounding_dino, sample_photos, tmp_path
):
    (sample_photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "out"
    args = [
        "label",
        str(sample_photos),
        "--out",
        str(out),
        "--model",
        tiny_grounding_dino,
    ]
    args += ["--class", "aluminum can: a shiny metal drink can", "--class", "person"]
    args += ["--threshold", "0.3", "--threshold", "person=0.5", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "Labeled 4 of 5 images" in result.output
    assert "broken.jpg" in result.output
    for path in (
        "coco/train/_annotations.coco.json",
        "yolo/data.yaml",
        "report.md",
    ):
        assert (out / path).is_file(), path
    assert len(list((out / "voc" / "train").glob("*.xml"))) == 4  # one per image
    assert list((out / "labels").glob("chunk-*.parquet"))

    (sample_photos / "broken.jpg").unlink()
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output


def test_an_ontology_file_and_class_options_combine(
    no_model_load, sample_photos, tmp_path
):
    ontology = tmp_path / "classes.yaml"
    ontology.write_text("person:\ncat: a cat\n")
    result = runner.invoke(
        app,
        ["label", str(sample_photos), "--ontology", str(ontology), "--class", "person"],
    )
    assert result.exit_code == 2
    assert "'person' is given twice" in result.output
