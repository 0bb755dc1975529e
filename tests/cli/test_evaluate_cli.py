"""``autolabel evaluate`` on a small app: exit codes, one-line errors, files written."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.evaluate import evaluate
from tests.tasks.truth_folders import coco_truth, write_out

runner = CliRunner()
app = typer.Typer()
app.command()(evaluate)


@app.callback()
def _main() -> None:
    """A group, so that ``evaluate`` is a subcommand as in ``autolabel``."""


def _run(*args: str):
    return runner.invoke(app, ["evaluate", *args])


@pytest.mark.usefixtures("prefect_harness")
def test_evaluate_writes_the_report_and_exits_0(tmp_path: Path):
    out = write_out(tmp_path)
    truth, _ = coco_truth(tmp_path)
    result = _run(str(out), "--truth", str(truth))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "precision 0.571, recall 0.571, F1 0.571" in said
    assert "1 truth image(s) matching no labeled image" in said
    written = sorted(p.name for p in (out / "evaluation").iterdir())
    assert written == ["evaluation.md", "metrics.json", "pr-cat.png", "pr-dog.png"]


@pytest.mark.usefixtures("prefect_harness")
def test_malformed_truth_is_one_line_and_exit_1(tmp_path: Path):
    out = write_out(tmp_path)
    truth = tmp_path / "bad.json"
    truth.write_text('{"images": [')
    result = _run(str(out), "--truth", str(truth))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1
    assert f"{truth}: malformed JSON" in lines[0]
    assert not (out / "evaluation").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_map_to_an_unknown_class_exits_2(tmp_path: Path):
    out = write_out(tmp_path)
    truth, _ = coco_truth(tmp_path)
    result = _run(str(out), "--truth", str(truth), "--map", "cat=lion")
    assert result.exit_code == 2
    assert "--map maps to ['lion']" in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--map", "cat"], 2, "write THEIR_CLASS=OUR_CLASS"),
        (["--iou", "0"], 2, "--iou 0.0: must be above 0"),
        (["--iou", "1.5"], 2, "1.5"),
    ],
)
def test_bad_options_exit_2_before_anything_runs(tmp_path: Path, args, code, message):
    result = _run(str(tmp_path), "--truth", str(tmp_path / "t.json"), *args)
    assert result.exit_code == code
    assert message in result.output


def test_a_missing_output_folder_exits_1(tmp_path: Path):
    result = _run(str(tmp_path / "nothing"), "--truth", str(tmp_path / "t.json"))
    assert result.exit_code == 1
    assert "no such output folder" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_evaluation_keeps_the_labels_and_the_last_report(tmp_path: Path):
    out = write_out(tmp_path)
    truth, _ = coco_truth(tmp_path)
    assert _run(str(out), "--truth", str(truth)).exit_code == 0
    kept = {
        p: p.read_bytes()
        for folder in ("labels", "images", "evaluation")
        for p in sorted((out / folder).iterdir())
    }
    for bad, message in [
        (tmp_path / "missing.json", "no such file or folder"),
        (tmp_path / "truth", "no data.yaml"),  # a folder of images only
    ]:
        if bad.name == "truth":
            (bad / "truth.json").rename(tmp_path / "moved.json")
        result = _run(str(out), "--truth", str(bad))
        assert result.exit_code == 1 and message in " ".join(result.output.split())
        assert result.output.count("error:") == 1
    assert len(kept) == 6
    assert {p: p.read_bytes() for p in kept} == kept


@pytest.mark.usefixtures("prefect_harness")
def test_classification_output_reports_accuracy(tmp_path: Path):
    from tests.tasks.test_evaluate_classification import _single

    out, truth = _single(tmp_path)
    result = _run(str(out), "--truth", str(truth))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "accuracy 0.600, precision 0.600, recall 0.600, F1 0.600" in said
    assert "1 unknown truth class(es)" in said
    assert (out / "evaluation" / "metrics.json").is_file()
