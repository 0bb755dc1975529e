"""Peak memory of a whole labeling run against the number of images (issue 18, item 3).

Makes N small JPEGs (96x128 by default, photos from scikit-image made distinct by a
few pixels, 1,000 per sub-folder), then runs the real command on them in a child
process: ``autolabel label SRC --out OUT --model <tiny random Grounding DINO>`` (plan,
label chunk by chunk, COCO/YOLO/VOC exports, quality checks, report). Measured per run:

- ``peak_rss_mb``: the child's peak resident memory, the larger of its
  ``ru_maxrss`` (read just before it exits) and the highest ``VmRSS`` sampled from
  ``/proc`` every 0.2 s (which also sees the exit); the temporary Prefect server is
  another process and not counted;
- ``peak_rss_after_labeling_mb``: the highest RSS sampled (``/proc``, every 0.2 s)
  once every chunk's shards existed, i.e. during exports, checks and the report, the
  part that used to read the whole label table;
- ``wall_s`` and the label count from ``report.md``.

``--images 1000,10000`` runs each count in turn (fresh folders) and prints a table with
each run's RSS relative to the first. Flat memory means every ratio within 1.10.

    .venv/bin/python benchmarks/bench_memory.py --images 1000,10000 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from gdino_bench_images import class_names, parse_size, sample_images  # noqa: E402

CHUNK_SIZE = 128  # the default --chunk-size: shards expected = ceil(N / 128)
PER_FOLDER = 1000


def make_images(count: int, size_wh: tuple[int, int], folder: Path) -> None:
    """``count`` distinct JPEGs: a few photos, each copy marked by its index in its
    top row of pixels (distinct files, so distinct content hashes)."""
    import numpy as np
    from PIL import Image

    bases = [np.asarray(image) for image in sample_images(14, size_wh)[0]]
    for index in range(count):
        pixels = bases[index % len(bases)].copy()
        bits = np.array([(index >> b) & 1 for b in range(20)], dtype=np.uint8)
        pixels[0:4, 0:80, :] = np.repeat(bits * 255, 4)[None, :, None]
        target = folder / f"part-{index // PER_FOLDER:03d}" / f"img-{index:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, quality=90)


def child(argv: list[str], maxrss_file: Path) -> None:
    """Run ``autolabel`` in this process, then record this process's peak RSS."""
    from cli.main import console_script

    sys.argv = ["autolabel", *argv]
    code = 0
    try:
        console_script()
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_file.write_text(json.dumps({"maxrss_kb": maxrss_kb, "exit": code}))
    sys.exit(code)


def _rss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(found.group(1)) if found else None


def run_once(
    count: int, args: argparse.Namespace, scratch: Path, model_dir: Path
) -> dict:
    """Make ``count`` images, label them with the CLI in a child, measure it."""
    source, out = scratch / f"src-{count}", scratch / f"out-{count}"
    started = time.perf_counter()
    make_images(count, parse_size(args.image_size), source)
    made_s = time.perf_counter() - started
    classes = [f"--class={name}" for name in class_names(args.classes)]
    argv = [
        "label",
        str(source),
        f"--out={out}",
        f"--model={model_dir}",
        "--device=cpu",
        f"--batch-size={args.batch_size}",
        *classes,
    ]
    maxrss_file = scratch / f"maxrss-{count}.json"
    env = dict(os.environ, PREFECT_HOME=str(scratch / f"prefect-{count}"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary Prefect server may take over 20 s (its default) on a loaded machine.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    command = [sys.executable, __file__, "--child", str(maxrss_file), "--", *argv]
    log_path = scratch / f"autolabel-{count}.log"
    log = log_path.open("wb")  # a file: a pipe read only at the end fills and blocks
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    shards = -(-count // CHUNK_SIZE)
    peak_after = peak_sampled = 0
    labeled_at = None
    while process.poll() is None:
        rss = _rss_kb(process.pid) or 0
        peak_sampled = max(peak_sampled, rss)
        if labeled_at is None:
            done = out / "images"
            if done.is_dir() and len(list(done.glob("chunk-*.parquet"))) >= shards:
                labeled_at = time.perf_counter() - started
        else:
            peak_after = max(peak_after, rss)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    log.close()
    output = log_path.read_text(errors="replace")
    measured = json.loads(maxrss_file.read_text()) if maxrss_file.exists() else {}
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    labels = re.search(r"- Labels: (\d+)", report)
    result = {
        "images": count,
        "exit": process.returncode,
        "peak_rss_mb": round(max(measured.get("maxrss_kb", 0), peak_sampled) / 1024, 1),
        "ru_maxrss_mb": round(measured.get("maxrss_kb", 0) / 1024, 1),
        "peak_rss_after_labeling_mb": round(peak_after / 1024, 1),
        "labeling_s": round(labeled_at, 1) if labeled_at else None,
        "wall_s": round(wall, 1),
        "make_images_s": round(made_s, 1),
        "labels": int(labels.group(1)) if labels else None,
        "command": " ".join(["autolabel", *argv]),
    }
    if process.returncode != 0:
        result["output_tail"] = output[-2000:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", default="1000,10000", help="counts, comma-separated"
    )
    parser.add_argument("--image-size", default="128x96", help="WxH of each JPEG")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scratch", type=Path, help="keep images and outputs here")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child([a for a in rest if a != "--"], args.child)
        return 0
    from model_loaders.random_init import save_random_grounding_dino

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        scratch = args.scratch or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        model_dir = save_random_grounding_dino(scratch / "tiny-gdino", "tiny")
        for count in (int(c) for c in args.images.split(",")):
            result = run_once(count, args, scratch, model_dir)
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    first = results[0]
    print(
        "\n| images | labels | peak RSS MB | x first | after labeling MB | x first "
        "| labeling s | wall s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = r["peak_rss_mb"] / max(first["peak_rss_mb"], 1e-9)
        after = r["peak_rss_after_labeling_mb"] / max(
            first["peak_rss_after_labeling_mb"], 1e-9
        )
        print(
            f"| {r['images']} | {r['labels']} | {r['peak_rss_mb']} | {ratio:.3f} "
            f"| {r['peak_rss_after_labeling_mb']} | {after:.3f} | {r['labeling_s']} "
            f"| {r['wall_s']} |"
        )
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
