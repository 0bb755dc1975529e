"""``benchmarks/bench_grounding_dino.py --sleeping-forward``, the host-side proxy for a
GPU, runs end to end here and labels every image: a proxy that skipped images, or
stopped feeding the model, would report a pipeline faster than the model. No timings
are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grounding_dino.py"


def test_the_sleeping_forward_proxy_labels_every_image(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *("--size", "tiny", "--images", "4", "--batch-size", "2"),
            *("--repeats", "1", "--skip-naive", "--sleeping-forward", "1"),
            *("--timeline", "1", "--json", str(report_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    (raw, pipeline) = report["results"]
    assert (raw["mode"], pipeline["mode"]) == (
        "(a) raw batched forward",
        "(b) full pipeline",
    )
    # Random weights find boxes on every photo: none means images were skipped.
    assert pipeline["detections_per_image"] > 0
    (run,) = report["timeline_ms"]
    assert run["forward_calls"] == 2  # 4 images, batches of 2: the model was fed
