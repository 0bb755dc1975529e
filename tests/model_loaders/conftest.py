"""Fixtures of the model backend tests: real photos in memory, one torch thread."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.photos import SAMPLE_PHOTOS, sample_image


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """The four sample photos at full size (four sizes, so they land in different
    shape buckets)."""
    return [sample_image(name) for name in SAMPLE_PHOTOS]


@pytest.fixture(scope="module")
def small_photos() -> list[Image.Image]:
    """Three sample photos of three sizes, shrunk to fit 160 px: enough for models that
    read 96-192 px anyway, and fast."""
    images = []
    for name in ("astronaut", "coffee", "rocket"):
        image = sample_image(name)
        image.thumbnail((160, 160))
        images.append(image)
    return images


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread while a module's tests run: on two cores shared with other
    jobs, OpenMP threads waiting for each other made tiny models 10-25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random OWLv2 folder (64 px, 16 boxes per image), loadable with
    ``--model PATH``."""
    from model_loaders.random_init_owlv2 import save_random_owlv2

    return str(save_random_owlv2(tmp_path_factory.mktemp("tiny-owlv2")))


@pytest.fixture(scope="session")
def tiny_mm_grounding_dino(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random MM Grounding DINO folder (the tiny Grounding DINO's sizes)."""
    from model_loaders.random_init import save_random_grounding_dino

    folder = tmp_path_factory.mktemp("tiny-mm-grounding-dino")
    return str(save_random_grounding_dino(folder, variant="mm-grounding-dino"))
