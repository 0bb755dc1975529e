"""What a ``--model`` is, read before anything loads: which backend labels with it.

A user who points at a model expects the tool to read what it is. A local folder says
so in its ``config.json`` (``model_type``, ``architectures``) or, for open_clip, in its
``open_clip_config.json``; a Hugging Face id is read the same way when its config is in
the local Hugging Face cache (read offline, never downloaded); otherwise the id's name
tells its family (``google/owlv2-...``, ``.../mm_grounding_dino_...``). Only small JSON
files are read: no torch, no transformers.

A folder that is no model any backend knows is refused in one line naming what was
found (``UnknownModelError``, a ``ModelLoadError``: exit 1), before anything loads; a
known model asked for a task it cannot do is a usage error (ValueError: exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; its message is one line: which, and what to do."""


class UnknownModelError(ModelLoadError):
    """A model folder that fits no backend (the message names what was found)."""


@dataclass(frozen=True)
class ModelFamily:
    """A kind of model, and the backend that labels each task with it."""

    name: str  # in words, for messages
    backends: Mapping[str, str]  # task -> backend name
    found: str = ""  # what was read to tell ("config.json model_type owlv2")

    def backend_for(self, task: str, model: str) -> str:
        """The backend doing ``task`` with this model; a ValueError if none can."""
        if task in self.backends:
            return self.backends[task]
        can = ", ".join(sorted(self.backends)) or "nothing"
        found = f" ({self.found})" if self.found else ""
        raise ValueError(
            f"--model {model} is {self.name}{found}: it can do {can}, not --task {task}"
        )


# config.json model_type -> family, for the zero-shot models the project runs.
_BY_MODEL_TYPE: dict[str, ModelFamily] = {
    "grounding-dino": ModelFamily(
        "a Grounding DINO model",
        {"detect": "grounding_dino", "segment": "grounded_sam"},
    ),
    "mm-grounding-dino": ModelFamily(
        "an MM Grounding DINO model", {"detect": "mm_grounding_dino"}
    ),
    "sam3": ModelFamily("a SAM 3 model", {"detect": "sam3", "segment": "sam3"}),
    "owlv2": ModelFamily("an OWLv2 model", {"detect": "owlv2"}),
    # Known, but no backend yet: its task prompt holds the whole class list, so a
    # class's boxes depend on the other classes (see the backends' notes).
    "omdet-turbo": ModelFamily("an OmDet-Turbo model", {}),
}
_OPEN_CLIP = ModelFamily(
    "an open_clip model",
    {"classify": "clip", "classify-multi": "clip"},
)
# Hub id fragments (lower case) -> model_type, tried in order: "mm_grounding_dino"
# before "grounding-dino", which it would also match.
_BY_NAME: tuple[tuple[str, str], ...] = (
    ("mm_grounding_dino", "mm-grounding-dino"),
    ("mm-grounding-dino", "mm-grounding-dino"),
    ("llmdet", "mm-grounding-dino"),
    ("grounding-dino", "grounding-dino"),
    ("grounding_dino", "grounding-dino"),
    ("owlv2", "owlv2"),
    ("omdet-turbo", "omdet-turbo"),
    ("omdet_turbo", "omdet-turbo"),
    ("sam3", "sam3"),
)


@dataclass(frozen=True)
class _Config:
    """The fields of a config.json that tell a model's kind."""

    model_type: str
    architectures: tuple[str, ...] = field(default=())


def model_family(
    model: str | None, trained: Mapping[str, str] | None = None
) -> ModelFamily | None:
    """The family of ``model`` (a folder, a Hub id, ``local-dir:``/``hf-hub:``), or
    None when nothing tells it (the task's default backend then decides).

    ``trained`` maps each task to the backend that runs the user's own Hugging Face
    models for it (``trained`` for detect; a classifier backend if there is one).

    Raises:
        UnknownModelError: A local folder that is no model any backend knows, or a
            model of a known family no backend runs yet (OmDet-Turbo).
    """
    if not model or "://" in model:
        return None
    trained = trained or {}
    if model.startswith(("local-dir:", "hf-hub:")):
        return _OPEN_CLIP
    folder = Path(model).expanduser()
    if folder.is_dir():
        family = _folder_family(folder, model, trained)
    elif folder.exists() or model.startswith((".", "/", "~")):
        return None  # a weights file (a state dict), or a path that is not there
    else:
        family = _hub_family(model, trained)
    if family is not None and not family.backends:
        raise UnknownModelError(
            f"--model {model} is {family.name} ({family.found}): no backend labels "
            "with it yet"
        )
    return family


def open_clip_name(model: str) -> str:
    """``model`` as open_clip names it: a plain folder holding an
    ``open_clip_config.json`` becomes ``local-dir:FOLDER``; anything else is kept."""
    if model.startswith(("local-dir:", "hf-hub:")):
        return model
    if (Path(model).expanduser() / "open_clip_config.json").is_file():
        return f"local-dir:{model}"
    return model


def _folder_family(folder: Path, model: str, trained: Mapping[str, str]) -> ModelFamily:
    if (folder / "open_clip_config.json").is_file():
        return _with_found(_OPEN_CLIP, "open_clip_config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(
            f"--model {model}: no config.json or open_clip_config.json in the folder, "
            "so it is no model a backend can load (give the folder of a Hugging Face "
            "or open_clip checkpoint)"
        )
    config = _read_config(config_file)
    if config is None:
        raise UnknownModelError(
            f"--model {model}: {config_file.name} is not a JSON object with a "
            "model_type"
        )
    family = _config_family(config, trained)
    if family is None:
        names = ", ".join(config.architectures) or "none"
        raise UnknownModelError(
            f"--model {model}: config.json names model_type "
            f"{config.model_type or 'none'!r} (architectures: {names}), which no "
            "backend labels with: give a Grounding DINO, MM Grounding DINO, SAM 3, "
            "OWLv2 or open_clip model, or a Hugging Face object detector"
        )
    return family


def _hub_family(model: str, trained: Mapping[str, str]) -> ModelFamily | None:
    cached = cached_config(model)
    if cached is not None:
        config = _read_config(cached)
        family = _config_family(config, trained) if config else None
        if family is not None:
            return family
    lowered = model.lower()
    for fragment, model_type in _BY_NAME:
        if fragment in lowered:
            return _with_found(_BY_MODEL_TYPE[model_type], f"its name has {fragment}")
    return None


def _config_family(config: _Config, trained: Mapping[str, str]) -> ModelFamily | None:
    found = f"config.json model_type {config.model_type}"
    if config.model_type.startswith("sam3"):
        return _with_found(_BY_MODEL_TYPE["sam3"], found)
    if config.model_type in _BY_MODEL_TYPE:
        return _with_found(_BY_MODEL_TYPE[config.model_type], found)
    for suffix, name, tasks in (
        ("ForObjectDetection", "an object detector", ("detect",)),
        (
            "ForImageClassification",
            "an image classifier",
            ("classify", "classify-multi"),
        ),
    ):
        architecture = next(
            (a for a in config.architectures if a.endswith(suffix)), None
        )
        if architecture is None:
            continue
        backends = {task: trained[task] for task in tasks if task in trained}
        return ModelFamily(name, backends, f"config.json architectures {architecture}")
    return None


def _with_found(family: ModelFamily, found: str) -> ModelFamily:
    return ModelFamily(family.name, family.backends, found)


def _read_config(path: str | Path) -> _Config | None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = []
    return _Config(
        str(config.get("model_type") or ""), tuple(str(a) for a in architectures)
    )


def cached_config(model: str) -> str | None:
    """The path of ``model``'s config.json in the local Hugging Face cache, if there
    (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a repo id, unreadable cache: unknown
        return None
    return found if isinstance(found, str) else None
