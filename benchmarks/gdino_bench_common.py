"""Shared setup of the Grounding DINO throughput benchmarks (CPU and GPU scripts).

The shared code is split by job: ``gdino_bench_images`` (the image set and classes),
``gdino_bench_modes`` (what modes a, b and c run), ``gdino_bench_timing`` (repeats and
measurements) and ``gdino_bench_report`` (environment, ratios, tables). Every one
imports only torch, transformers, PIL and numpy at the top, because the GPU script must
run on a lent machine where this repo's other dependencies (prefect, supervision,
pyarrow, ...) may be missing; ``tasks`` is imported only inside ``run_label_chunk``,
which the GPU script calls only where it imports. Both scripts time the raw forward
(a), the pipeline (b) and the naive per-class loop (c) with this one copy of the code,
so their ratios compare across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def put_repo_on_path() -> None:
    """Make ``model_loaders`` (and ``tasks``) importable without installing the repo.

    A lent GPU machine gets a copy of the working tree, not an installed package.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def quiet_libraries() -> None:
    """No weight-loading progress bars between the table's lines."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def run_in_scratch(
    args: argparse.Namespace,
    run_benchmark: Callable[[argparse.Namespace, Path], dict[str, Any]],
    *,
    prefix: str,
) -> int:
    """Run a benchmark in a temporary folder on ``args.threads`` torch threads and
    write its report to ``args.json`` when asked; the scripts' shared ``main`` tail."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        report = run_benchmark(args, Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0
