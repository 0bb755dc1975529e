"""A torchvision detector the user trained (a tiny random Faster R-CNN saved as a state
dict with a class-names file) as the labeler: against torchvision's own model on the
same weights, with its classes mapped onto the ontology (one by name, one renamed by
--map, one dropped), the background rule, safe loading, and end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from model_loaders.protocol import ModelLoadError, ModelSpec
from model_loaders.torchvision_detector import (
    TorchvisionDetector,
    load_state_dict,
    read_class_names,
)
from tasks.labels import read_labels
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.labeling import label_folder
from tests.model_loaders.mapped_classes import (
    CLASS_MAP,
    LABELED_AS,
    MODEL_CLASSES,
    ONTOLOGY,
    assert_mapped_like_reference,
    labeled_as,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHITECTURE = "fasterrcnn_mobilenet_v3_large_320_fpn"
CLASSES = list(MODEL_CLASSES)  # model labels 1..3; label 0 is the background
SIZES = {"min_size": 128, "max_size": 192}  # small images keep the test fast


def _build(**kwargs) -> torch.nn.Module:
    import torchvision

    return torchvision.models.get_model(
        ARCHITECTURE,
        weights=None,
        weights_backbone=None,
        num_classes=len(CLASSES) + 1,
        **kwargs,
    ).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_photos):
    """weights.pt (state dict) + classes.txt (object classes only), as a user saves
    them, from a random model that predicts every class."""
    folder = tmp_path_factory.mktemp("fasterrcnn")
    torch.manual_seed(0)
    model = _build()
    _calibrate_batch_norm(model, small_photos)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.1)
    state = model.state_dict()
    torch.save(state, folder / "weights.pt")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder, state


def _calibrate_batch_norm(model: torch.nn.Module, photos: list[Image.Image]) -> None:
    """Random BatchNorm statistics (mean 0, variance 1) collapse a random backbone's
    features: every proposal then gets the same scores. Statistics from a few photos,
    as training would set them, bring back differences between proposals."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    model.backbone.train()
    with torch.no_grad():
        model.backbone(model.transform([_tensor(p) for p in photos])[0].tensors)
    model.eval()


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) / 255.0


def _load(model: str, **options) -> TorchvisionDetector:
    options = {
        "architecture": ARCHITECTURE,
        "class_map": CLASS_MAP,
        **SIZES,
        **options,
    }
    return TorchvisionDetector.load(
        ModelSpec(backend="torchvision", model=str(model), device="cpu", batch_size=2),
        **options,
    )


def test_labels_equal_torchvision_at_the_floor_mapped_to_the_ontology(
    checkpoint, small_photos
):
    """torchvision's model built with box_score_thresh = floor, one image at a time,
    versus ours (threshold 0 inside, floor after, images batched by size)."""
    folder, state = checkpoint
    floor = 0.3
    reference = _build(box_score_thresh=floor, **SIZES)
    reference.load_state_dict(state)
    images = [small_photos[0], small_photos[1], small_photos[0]]
    ours = _load(folder).predict(images, ONTOLOGY, confidence_floor=floor)

    seen = set()
    for image, detections in zip(images, ours, strict=True):
        with torch.no_grad():
            (expected,) = reference([_tensor(image)])
        names = [CLASSES[label - 1] for label in expected["labels"].tolist()]
        seen |= set(names)
        assert_mapped_like_reference(
            detections,
            image,
            expected["boxes"].numpy(),
            expected["scores"].numpy(),
            names,
            score_atol=1e-4,  # batched convolutions round a little differently
        )
    assert seen == set(CLASSES)  # every class, the dropped one included, was predicted


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("names.txt", "person\ncan\ndog\n"),
        ("names.txt", "__background__\nperson\ncan\ndog"),
        ("names.json", json.dumps(CLASSES)),
        ("names.json", json.dumps(["background", *CLASSES])),
    ],
)
def test_class_names_with_or_without_the_background(tmp_path, file_name, content):
    path = tmp_path / file_name
    path.write_text(content)
    assert read_class_names(path) == ["__background__", *CLASSES]


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("names.txt", "person\n\ndog\n", "must not be empty"),
        ("names.json", '{"0": "person"}', "expected a JSON list"),
        ("names.json", "[person", "not valid JSON"),
    ],
)
def test_bad_class_names_files_are_refused(tmp_path, file_name, content, message):
    path = tmp_path / file_name
    path.write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        read_class_names(path)


def test_a_names_file_that_does_not_fit_the_head_is_refused(checkpoint, tmp_path):
    folder, _ = checkpoint
    names = tmp_path / "names.txt"
    names.write_text("person\ncan\n")  # one short
    with pytest.raises(ModelLoadError, match=r"3 classes \(background \+ 2 names\)"):
        _load(folder / "weights.pt", class_names=names)


def test_safetensors_and_wrapped_checkpoints_load_alike(checkpoint, tmp_path):
    from safetensors.torch import save_file

    folder, state = checkpoint
    save_file(state, tmp_path / "weights.safetensors")
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    dataparallel = {f"module.{key}": value for key, value in state.items()}
    torch.save({"state_dict": dataparallel}, tmp_path / "dataparallel.pt")
    for name in ("weights.safetensors", "checkpoint.pth", "dataparallel.pt"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_a_state_dict_of_another_model_is_refused(checkpoint, tmp_path):
    folder, state = checkpoint
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(ModelLoadError, match="1 unexpected keys"):
        _load(tmp_path / "weights.pt", class_names=folder / "classes.txt")


def test_a_pickled_object_is_never_unpickled(checkpoint, tmp_path):
    """torchvision's reference scripts pickle argparse args beside the weights:
    weights_only refuses them, with a hint to re-save the state dict alone."""
    folder, state = checkpoint
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "a.pth")
    with pytest.raises(ModelLoadError, match="re-save only the state dict") as error:
        _load(tmp_path / "a.pth", class_names=folder / "classes.txt")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"architecture": None}, "no architecture given; choose one of"),
        ({"architecture": "resnet50"}, "'resnet50'; choose one of"),
        ({"architecture": "retinanet_resnet50_fpn"}, "does not fit retinanet"),
    ],
)
def test_a_wrong_architecture_is_refused(checkpoint, options, message):
    folder, _ = checkpoint
    with pytest.raises(ModelLoadError, match=message):
        _load(folder / "weights.pt", **options)


def test_a_folder_without_class_names_is_refused(checkpoint, tmp_path):
    folder, _ = checkpoint
    (tmp_path / "weights.pt").write_bytes((folder / "weights.pt").read_bytes())
    with pytest.raises(ModelLoadError, match="no class names for"):
        _load(tmp_path)


@pytest.mark.usefixtures("empty_model_cache")
def test_label_chunk_labels_with_the_torchvision_model(
    checkpoint, sample_photos, tmp_path
):
    """Batch labeling through the model cache and the registry, spec fields only (the
    folder holds weights.pt + classes.txt), with a per-class threshold."""
    folder, _ = checkpoint
    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(
            backend="torchvision",
            model=str(folder),
            device="cpu",
            architecture=ARCHITECTURE,
            class_map=CLASS_MAP,
        ),
        thresholds=Thresholds(default=0.3, per_class={"soda": 0.5}),
        nms="none",
    )
    labels = read_labels(label_folder(sample_photos, tmp_path / "out", settings))

    assert labeled_as(labels) == LABELED_AS
    soda = labels["class_name"] == "soda"
    assert labels.loc[soda, "confidence"].min() >= 0.5
    assert labels.loc[~soda, "confidence"].min() >= 0.3
    assert (labels["x_max"] <= labels["width"]).all()
