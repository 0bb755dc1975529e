"""``autolabel preview``: the flow, its artifacts in the Prefect UI, re-filtering."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from cli.main import app
from tasks.preview import filter_candidates, load_record, read_candidates
from tasks.thresholds import Thresholds
from tests.photos import write_sample_photos

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Previewed:
    photos: Path
    out: Path
    output: str
    model: str


@pytest.fixture(scope="module")
def previewed(
    prefect_harness, tmp_path_factory: pytest.TempPathFactory, tiny_grounding_dino: str
) -> Previewed:
    """``autolabel preview`` of 2 of 4 photos, run once for this module."""
    root = tmp_path_factory.mktemp("preview-flow")
    photos, out = root / "photos", root / "out"
    write_sample_photos(photos)
    result = CliRunner().invoke(
        app,
        ["preview", str(photos), "--class", "can", "--class", "person",
         "--model", tiny_grounding_dino, "--device", "cpu", "--out", str(out),
         "--sample", "2", "--seed", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return Previewed(photos, out, result.output, tiny_grounding_dino)


def _row(output: str, name: str) -> tuple[str, str]:
    """(threshold, 'shown/total') of class ``name`` in the printed table."""
    match = re.search(rf"│ {name}\s+│ (\S+)\s+│ (\d+/\d+)\s+│", output)
    assert match, output
    return match.group(1), match.group(2)


def _expected(out: Path, **thresholds: float) -> dict[str, str]:
    candidates = read_candidates(out)
    shown = filter_candidates(
        candidates,
        Thresholds(per_class=thresholds),
        nms="class",
        nms_iou=0.5,
        class_names=["can", "person"],
    )
    return {
        name: f"{(shown['class_name'] == name).sum()}/"
        f"{(candidates['class_name'] == name).sum()}"
        for name in ["can", "person"]
    }


def test_preview_prints_counts_and_writes_the_sample(previewed: Previewed):
    record = load_record(previewed.out)
    assert len(record.sample) == 2 and record.seed == 3
    assert "0 credits" in previewed.output
    expected = _expected(previewed.out, can=0.35, person=0.35)
    assert _row(previewed.output, "can") == ("0.35", expected["can"])
    assert _row(previewed.output, "person") == ("0.35", expected["person"])
    images = sorted(p.name for p in (previewed.out / "preview" / "images").iterdir())
    assert images == sorted(record.sample)


def test_preview_artifacts_are_on_the_flow_run(previewed: Previewed):
    run_id = UUID(load_record(previewed.out).run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            )
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    markdown = by_key["autolabel-preview"].data
    expected = _expected(previewed.out, can=0.35, person=0.35)
    assert f"| can | 0.35 | {expected['can']} |" in markdown
    assert "shown / total" in markdown and "0 credits" in markdown
    assert markdown.count("](data:image/jpeg;base64,") == 2  # the annotated sample
    table = by_key["autolabel-preview-candidates"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"image", "class", "score", "shown"} <= set(rows[0])
    assert len(rows) == len(read_candidates(previewed.out))


def test_new_threshold_refilters_without_importing_torch(
    previewed: Previewed, tmp_path: Path
):
    out = tmp_path / "out"
    shutil.copytree(previewed.out, out)
    script = (
        "import sys\n"
        "from cli.main import app\n"
        "try:\n"
        f"    app(['preview', '--from', {str(out)!r}, '--threshold', 'can=0.6',"
        " '--threshold', 'person=0.9'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr
    expected = _expected(out, can=0.6, person=0.9)
    assert _row(done.stderr, "can") == ("0.6", expected["can"])
    assert _row(done.stderr, "person") == ("0.9", expected["person"])
    assert load_record(out).settings.thresholds.for_class("can") == 0.6


def test_new_descriptions_rerun_the_same_sample(previewed: Previewed, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(previewed.out, out)
    result = CliRunner().invoke(
        app,
        ["preview", "--from", str(out), "--class", "can: soda can",
         "--class", "person", "--model", previewed.model, "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_record(out).sample == load_record(previewed.out).sample
    assert set(read_candidates(out)["prompt"]) <= {"soda can", "person"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "missing SOURCE"),
        (["--from", "{empty}"], 2, "no preview in"),
        (["--from", "{out}", "{photos}"], 2, "not both"),
        (["--from", "{out}", "--threshold", "cann=0.3"], 2, "unknown class"),
        (["--from", "{out}", "--threshold", "can=2"], 2, "between 0 and 1"),
        (["{photos}", "--class", "can", "--images", "nope.jpg"], 2, "no such image"),
        (["{missing}", "--class", "can"], 1, "no such folder"),
        (["{photos}"], 2, "no classes"),
    ],
)
def test_bad_preview_options_exit_before_any_model_loads(
    previewed: Previewed, tmp_path: Path, args, code, message
):
    values = {
        "empty": str(tmp_path),
        "out": str(previewed.out),
        "photos": str(previewed.photos),
        "missing": str(tmp_path / "missing"),
    }
    args = [arg.format(**values) for arg in args]
    # A model that cannot load: reaching it would exit 1 with another message. (With
    # --from alone the model is never run, and --model is refused: no need there.)
    model = [] if args[:1] == ["--from"] else ["--model", "/nonexistent"]
    result = CliRunner().invoke(app, ["preview", *args, *model])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())


def test_from_without_classes_refuses_options_that_need_the_model(previewed: Previewed):
    """--from OUT alone only re-filters; a new model or task must not be ignored."""
    before = load_record(previewed.out)
    result = CliRunner().invoke(
        app, ["preview", "--from", str(previewed.out), "--task", "segment"]
    )
    assert result.exit_code == 2
    assert "only re-filters" in result.output and "--class" in result.output
    assert load_record(previewed.out) == before
