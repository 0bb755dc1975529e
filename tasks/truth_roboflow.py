"""Ground truth from a Roboflow dataset version: ``roboflow://WORKSPACE/PROJECT/VERSION``.

The version is downloaded through the one Roboflow client (its key lookup, retries and
redaction) as Roboflow's COCO export (``<split>/_annotations.coco.json`` beside the
images) into a temporary folder, read as COCO truth while its images are there to be
hashed, and removed. Roboflow renames exported images (``cat.jpg`` ->
``cat_jpg.rf.<hash>.jpg``) and may re-encode or resize them, so ``tasks.truth`` also
matches such names back to the original file name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from clients.roboflow import RoboflowClient, RoboflowError, RoboflowTarget
from tasks.truth_coco import read_coco_truth
from tasks.truth_model import GroundTruth, TruthError

EXPORT_FORMAT = "coco"


def parse_version_uri(uri: str) -> tuple[RoboflowTarget, int]:
    """``roboflow://WORKSPACE/PROJECT/VERSION`` as (target, version number).

    Raises:
        TruthError: For another shape or a version that is not a positive number.
    """
    shape = "expected roboflow://WORKSPACE/PROJECT/VERSION"
    try:
        target = RoboflowTarget.parse(uri, extra="version")
    except RoboflowError:
        raise TruthError(f"{uri}: {shape}") from None
    if target.extra is None or not target.extra.isdigit() or int(target.extra) < 1:
        raise TruthError(f"{uri}: {shape} (VERSION a number from 1)")
    return target, int(target.extra)


def read_roboflow_truth(uri: str, *, api_key: str | None = None) -> GroundTruth:
    """The COCO export of a Roboflow version as truth (its ``source`` is ``uri``).

    Raises:
        TruthError: One line (never the key) for a bad URI, no key, a version that
            cannot be downloaded, or an export that is not COCO truth.
    """
    target, version = parse_version_uri(uri)
    with tempfile.TemporaryDirectory(prefix="autolabel-truth-") as folder:
        location = Path(folder) / "export"
        try:
            client = RoboflowClient.resolve(api_key, workspace=target.workspace)
            client.download_version(
                target, version, model_format=EXPORT_FORMAT, location=location
            )
        except RoboflowError as error:
            raise TruthError(f"{uri}: {error}") from None
        files = sorted(location.glob("*.json")) or sorted(location.glob("*/*.json"))
        if not files:
            raise TruthError(f"{uri}: the version's COCO export holds no JSON file")
        truth = read_coco_truth(files, source=location)
    truth.source = uri
    return truth
