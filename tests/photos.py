"""Real sample photos (shipped inside scikit-image) for tests: in memory or as files.

A helper module, not a test module: the fixtures built on it live in conftest.py
(``sample_photos``, ``shared_sample_photos``) and tests/model_loaders/conftest.py
(``photos``, ``small_photos``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sample_image(name: str) -> Image.Image:
    """The scikit-image photo ``name`` (``skimage.data.<name>``) as an RGB image."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def write_sample_photos(
    folder: Path, names: tuple[str, ...] = SAMPLE_PHOTOS
) -> list[Path]:
    """Real photos shipped inside scikit-image, saved as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.jpg"
        sample_image(name).save(path, quality=90)
        paths.append(path)
    return paths
