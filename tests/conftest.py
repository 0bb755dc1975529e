"""Shared fixtures: tiny random Grounding DINO, SAM and CLIP models saved like real
checkpoints, real sample photos, and one Prefect test harness (a real temporary Prefect
server) per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before Prefect is imported anywhere: a private PREFECT_HOME per test session (cached
# results and the harness database must not leak between sessions) and no analytics (no
# network here).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="autolabel-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

# write_sample_photos stays importable from here for modules that still do so.
from tests.photos import write_sample_photos  # noqa: E402


@pytest.fixture(scope="session")
def tiny_grounding_dino(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ~0.5 M parameter random Grounding DINO folder, loadable with
    ``--model PATH``.
    """
    from model_loaders.random_init import save_random_grounding_dino

    return str(
        save_random_grounding_dino(tmp_path_factory.mktemp("tiny-grounding-dino"))
    )


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random vit_tiny SAM state dict, loadable with ``--sam-checkpoint PATH``."""
    from model_loaders.random_init_sam_clip import save_random_sam

    return str(save_random_sam(tmp_path_factory.mktemp("sam") / "sam_tiny.pth"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``local-dir:`` of a tiny random open_clip model (config + safetensors)."""
    from model_loaders.random_init_sam_clip import save_random_open_clip

    folder = save_random_open_clip(tmp_path_factory.mktemp("tiny-clip"))
    return f"local-dir:{folder}"


@pytest.fixture(scope="session")
def tiny_sam3(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random SAM 3 whose scores spread (score_scale) so a floor keeps some."""
    from model_loaders.random_init_sam3 import save_random_sam3

    folder = tmp_path_factory.mktemp("tiny-sam3")
    return str(save_random_sam3(folder, "tiny", score_scale=100.0))


@pytest.fixture
def sample_photos(tmp_path: Path) -> Path:
    """A folder of four real photos of different sizes and aspect ratios, new for each
    test (the test may change it)."""
    folder = tmp_path / "photos"
    write_sample_photos(folder)
    return folder


@pytest.fixture(scope="session")
def shared_sample_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same four photos in one folder for the whole session: read only."""
    folder = tmp_path_factory.mktemp("shared-sample-photos") / "photos"
    write_sample_photos(folder)
    return folder


@pytest.fixture
def empty_model_cache():
    """The model cache empty before and after the test: what the test loads through
    it is its own."""
    from model_loaders import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session")
def prefect_harness():
    """One real temporary Prefect server for the whole session (starts in ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def roboflow_api(monkeypatch, tmp_path):
    """A local stub of the Roboflow API that the real roboflow SDK talks to
    (API_URL)."""
    import roboflow.config

    from tests.roboflow_stub import RoboflowStub

    stub = RoboflowStub()
    monkeypatch.setenv("API_URL", stub.start())
    monkeypatch.setenv("ROBOFLOW_CONFIG_DIR", str(tmp_path / "no-roboflow-config"))
    roboflow.config.refresh_region_urls()
    yield stub
    stub.stop()
    monkeypatch.delenv("API_URL")
    roboflow.config.refresh_region_urls()


@pytest.fixture
def s3_test_client(s3_endpoint, monkeypatch):
    """A boto3 client of the test S3 server. The dummy credentials boto3 insists on
    are set in the environment, so the code under test (which makes its own clients)
    finds them too."""
    from tasks.s3 import s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_client(s3_endpoint)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's) on 127.0.0.1, for boto3 to talk to."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
