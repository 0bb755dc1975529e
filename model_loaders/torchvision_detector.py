"""A torchvision detection model the user trained earlier, as the labeler.

torchvision saves no architecture or class names with its weights, so three things are
given: the architecture's builder name (``fasterrcnn_resnet50_fpn``, ``retinanet_...``,
``ssdlite320_mobilenet_v3_large``, ...: any of ``torchvision.models.list_models(
module=torchvision.models.detection)``), the state dict, and a class-names file.

Weights: ``.safetensors``, or ``.pt``/``.pth`` read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only,
never arbitrary objects. A ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper and a
``module.`` prefix (DataParallel) are unwrapped; a full training checkpoint of
torchvision's reference scripts also pickles ``args`` and is refused by that rule:
re-save its ``["model"]`` entry as a plain state dict.

Class names and torchvision's background: torchvision detectors reserve label 0 for the
background (``num_classes`` counts it), so the model's label ``i`` is class ``i`` of a
list whose entry 0 is the background. The names file may be written either way:
- starting with ``__background__`` (or ``background``): used as is, ``num_classes`` =
  entries (torchvision's own COCO list has this form, ``N/A`` gaps included);
- object classes only: a background entry is put in front, ``num_classes`` =
  entries + 1.
Label 0 never becomes a label, whatever the model predicts for it. A names file that
does not fit the checkpoint's class head is refused with both counts.

The model's internal score threshold is set to 0 so that the labeling floor, applied
afterwards (inclusive), decides which candidates are kept; the results equal those of
the model built with ``box_score_thresh`` = floor. Images are batched only with images
of the same size (a fixed-size model such as SSD batches everything), because padding
to a shared size changes what the backbone sees near the border. Mask and keypoint
R-CNN checkpoints load too; only their boxes become labels.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import supervision as sv
import torch
from PIL import Image

from model_loaders.class_mapping import ClassMapper, ClassMapping, parse_class_map
from model_loaders.device import resolve_device
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelLoadError, ModelSpec, Predictions

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
CLASS_NAME_FILES = ("classes.json", "classes.txt")
BACKGROUND_NAMES = frozenset({"__background__", "background"})
BACKGROUND = "__background__"


def detection_architectures() -> list[str]:
    """Builder names of every torchvision detection architecture."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.detection)


class TorchvisionDetector:
    """A closed-set torchvision detector; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        label_names: Sequence[str],
        spec: ModelSpec,
        device: torch.device,
        class_map: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.model = model
        self.label_names = tuple(label_names)  # index 0 is the background
        self.spec = spec
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.mapper = ClassMapper(self.label_names[1:], class_map, model=spec.model)

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        *,
        architecture: str | None = None,
        class_names: str | Path | None = None,
        class_map: Sequence[str] | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> TorchvisionDetector:
        """Build ``architecture`` and load the state dict ``spec.model`` into it.

        Args:
            spec: ``model`` is the weights file, or a folder holding exactly one;
                device, dtype (``auto`` = float32: not every torchvision detection op
                runs in half precision), batch size.
            architecture: torchvision builder name; default: the spec's
                ``architecture`` field.
            class_names: JSON list or text file (one name a line); default: the spec's
                ``class_names`` field, else classes.json / classes.txt beside the
                weights.
            class_map: ``--map model_name=class`` options; default: the spec's
                ``class_map`` field.
            min_size: resize of the model's transform (R-CNN, RetinaNet, FCOS); use
                the training value. Default: the architecture's.
            max_size: likewise, the longest side.
        """
        architecture = architecture or getattr(spec.options, "architecture", None)
        pairs = parse_class_map(
            getattr(spec.options, "class_map", ()) if class_map is None else class_map
        )
        weights = _weights_file(Path(spec.model).expanduser())
        names_path = class_names or getattr(spec.options, "class_names", None)
        label_names = read_class_names(
            Path(names_path) if names_path else _class_names_beside(weights)
        )
        device = resolve_device(spec.device)
        dtype = torch.float32 if spec.dtype == "auto" else getattr(torch, spec.dtype)
        model = _build(architecture, len(label_names), min_size, max_size)
        _load_weights(model, architecture, weights, label_names)
        _keep_every_score(model)
        model = model.to(device=device, dtype=dtype).eval()
        return cls(model, label_names, spec, device, pairs)

    def class_mapping(self, ontology: Ontology) -> ClassMapping:
        """The model-class -> ontology mapping (validated; raises ClassMappingError)."""
        return self.mapper.for_ontology(ontology)

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        mapping = self.class_mapping(ontology)
        results: list[sv.Detections | None] = [None] * len(images)
        for batch in self._batches(images):
            outputs = self._forward([images[i] for i in batch])
            for index, output in zip(batch, outputs, strict=True):
                labels = output["labels"].cpu().numpy()
                foreground = labels > 0  # label 0 is the background
                image = images[index]
                results[index] = mapping.to_detections(
                    xyxy=output["boxes"].float().cpu().numpy()[foreground],
                    confidence=output["scores"].float().cpu().numpy()[foreground],
                    model_names=[self.label_names[i] for i in labels[foreground]],
                    resolution_wh=(image.width, image.height),
                    confidence_floor=confidence_floor,
                )
        return [r for r in results if r is not None]

    def _batches(self, images: Sequence[Image.Image]) -> list[list[int]]:
        """Image indices grouped by size (one group for a fixed-size model), batched."""
        fixed = getattr(getattr(self.model, "transform", None), "fixed_size", None)
        buckets: dict[object, list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            buckets[fixed or image.size].append(index)
        size = self.spec.batch_size
        return [
            indices[start : start + size]
            for indices in buckets.values()
            for start in range(0, len(indices), size)
        ]

    @torch.inference_mode()
    def _forward(self, images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
        tensors = [
            torch.from_numpy(np.asarray(image.convert("RGB")).copy())
            .permute(2, 0, 1)
            .to(self.device, self.dtype)
            / 255.0
            for image in images
        ]
        return self.model(tensors)


def read_class_names(path: Path) -> list[str]:
    """Names per model label, entry 0 the background (added when the file lacks it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ModelLoadError(
            f"cannot read class names file {path}: {error.strerror}"
        ) from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelLoadError(
                f"class names file {path} is not valid JSON: {error}"
            ) from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelLoadError(
                f"class names file {path}: expected a JSON list of names"
            )
    else:
        names = text.rstrip("\n").split("\n") if text.strip() else []
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise ModelLoadError(
            f"class names file {path}: names must not be empty (a blank entry would "
            "shift every later class)"
        )
    if names[0].casefold() in BACKGROUND_NAMES:
        return [BACKGROUND, *names[1:]]
    return [BACKGROUND, *names]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load(weights_only=True); never a pickle."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle.UnpicklingError on any non-tensor object
            raise ModelLoadError(
                f"cannot load {path} as plain weights (torch.load weights_only=True): "
                f"{_first_line(error)}; re-save only the state dict, e.g. "
                "torch.save(checkpoint['model'], 'model.pt'), or use safetensors"
            ) from None
    for key in ("model", "state_dict"):  # a checkpoint dict wrapping the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise ModelLoadError(
                f"--model {path}: expected one weights file "
                f"({', '.join(WEIGHT_SUFFIXES)}) in the folder, found {len(found)}"
            )
        return found[0]
    if not path.is_file():
        raise ModelLoadError(f"--model {path}: no such weights file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(
            f"--model {path}: torchvision weights must be {', '.join(WEIGHT_SUFFIXES)}"
        )
    return path


def _class_names_beside(weights: Path) -> Path:
    for name in CLASS_NAME_FILES:
        if (weights.parent / name).is_file():
            return weights.parent / name
    raise ModelLoadError(
        f"no class names for {weights}: give a class names file (JSON list or one name "
        f"a line) or put {' or '.join(CLASS_NAME_FILES)} beside the weights"
    )


def _build(
    architecture: str | None,
    num_classes: int,
    min_size: int | None,
    max_size: int | None,
) -> torch.nn.Module:
    import torchvision

    known = detection_architectures()
    if architecture not in known:
        given = "no architecture given" if architecture is None else repr(architecture)
        raise ModelLoadError(
            f"torchvision detector: {given}; choose one of {', '.join(known)}"
        )
    sizes = {"min_size": min_size, "max_size": max_size}
    try:
        return torchvision.models.get_model(
            architecture,
            weights=None,
            weights_backbone=None,  # the default would download ImageNet weights
            num_classes=num_classes,
            **{k: v for k, v in sizes.items() if v is not None},
        )
    except (TypeError, ValueError) as error:
        raise ModelLoadError(
            f"cannot build {architecture} with {num_classes} classes: "
            f"{_first_line(error)}"
        ) from None


def _load_weights(
    model: torch.nn.Module, architecture: str, path: Path, label_names: list[str]
) -> None:
    """Load strictly, except BatchNorm counters.

    A model fine-tuned from ImageNet weights uses FrozenBatchNorm2d, which has no
    ``num_batches_tracked``; built without weights it gets BatchNorm2d, which computes
    the same in eval mode but has that counter.
    """
    try:
        missing, unexpected = model.load_state_dict(load_state_dict(path), strict=False)
    except RuntimeError as error:  # size mismatch: class head or architecture
        raise ModelLoadError(
            f"{path} does not fit {architecture} with {len(label_names)} classes "
            f"(background + {len(label_names) - 1} names): {_mismatch(error)}. "
            "Check the architecture, and that the names file lists the object "
            "classes only, or all classes starting with __background__"
        ) from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{path} is not a state dict of {architecture}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
        )


def _keep_every_score(model: torch.nn.Module) -> None:
    """Score threshold 0 inside the model: the labeling floor filters afterwards."""
    roi_heads = getattr(model, "roi_heads", None)
    target = roi_heads if roi_heads is not None else model
    if hasattr(target, "score_thresh"):
        target.score_thresh = 0.0


def _mismatch(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    sizes = [line for line in lines if line.startswith("size mismatch")]
    return sizes[0] if sizes else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"
