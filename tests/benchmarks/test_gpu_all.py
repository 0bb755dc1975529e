"""``benchmarks/gpu_all.py --smoke``: the one GPU script runs end to end here (tiny
models, 2 images, CPU) and writes the JSON a lent GPU machine would write, so the one
call that machine gets is not spent finding a broken script. No timings are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_all.py"
MODELS = ("grounding_dino", "grounded_sam", "sam3", "clip")


def test_smoke_writes_a_row_per_model_with_images_per_second(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_all.json").read_text())
    rows = report["rows"]
    assert sorted({row["model"] for row in rows}) == sorted(MODELS)
    checked = 0
    for row in rows:
        assert "note" not in row, row
        for key in ("raw_images_per_s", "pipeline_images_per_s", "b_over_a"):
            value = row[key]
            assert isinstance(value, float) and math.isfinite(value), (key, row)
            assert value > 0, (key, row)
            checked += 1
    # Grounding DINO: one row per (dtype, batch size); the smoke run has one.
    dino = [
        (r["dtype"], r["batch_size"]) for r in rows if r["model"] == "grounding_dino"
    ]
    assert dino == [("float32", 2)]
    assert checked == 3 * len(rows) == 3 * 4
    # The backends that prepare ahead also say where their pipeline waited: one
    # timeline per (b) repeat, its parts adding up to the run.
    timelines = {
        row["model"]: row["details"]["b_timeline_ms"]
        for row in rows
        if "b_timeline_ms" in row["details"]
    }
    assert sorted(timelines) == ["clip", "grounded_sam", "grounding_dino"]
    for runs in timelines.values():
        (run,) = runs  # one repeat in the smoke run
        assert run["forward_calls"] >= 1
        parts = sum(
            run[key]
            for key in (
                "before_first_forward_ms",
                "in_forwards_ms",
                "between_forwards_ms",
                "after_last_forward_ms",
            )
        )
        assert math.isclose(parts, run["total_ms"], rel_tol=0.01, abs_tol=0.5), run
    assert report["config"]["smoke"] is True
    assert report["environment"]
