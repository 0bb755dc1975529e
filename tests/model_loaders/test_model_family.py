"""The backend follows the model: ``--model DIR`` (or a Hub id) picks its backend from
what the model is, with no ``--backend``; a folder no backend knows, or a task the
model cannot do, is one line before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from cli.main import app
from model_loaders.backends import BACKENDS, backend_for_model
from model_loaders.model_family import UnknownModelError, model_family
from model_loaders.protocol import ModelSpec
from tasks.credits import credit_kind
from tests.photos import write_sample_photos

runner = CliRunner()
CLASSES = ["--class", "person", "--class", "cat: cat; kitten", "--class", "rocket"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail loudly if anything tries to load a model."""

    def refuse(spec):
        raise AssertionError("a model was loaded although the run cannot start")

    monkeypatch.setattr("model_loaders.cache.get_model", refuse)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("family") / "photos"
    write_sample_photos(folder)
    return folder


def _folder(tmp_path: Path, config: dict | None, name: str = "model") -> str:
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    ("config", "task", "backend"),
    [
        ({"model_type": "owlv2"}, "detect", "owlv2"),
        ({"model_type": "mm-grounding-dino"}, "detect", "mm_grounding_dino"),
        ({"model_type": "grounding-dino"}, "detect", "grounding_dino"),
        ({"model_type": "grounding-dino"}, "segment", "grounded_sam"),
        ({"model_type": "sam3"}, "segment", "sam3"),
        (
            {"model_type": "rt_detr", "architectures": ["RTDetrForObjectDetection"]},
            "detect",
            "trained",
        ),
    ],
)
def test_a_folder_config_picks_the_backend(tmp_path, config, task, backend) -> None:
    model = _folder(tmp_path, config)
    assert backend_for_model(model, task) == backend
    assert ModelSpec(model=model, task=task).backend == backend
    # --backend still overrides.
    assert ModelSpec(model=model, backend="grounding_dino").backend == "grounding_dino"


@pytest.mark.parametrize(
    ("config", "backend"),
    [
        ({"model_type": "owlv2"}, "owlv2"),
        ({"model_type": "mm-grounding-dino"}, "mm_grounding_dino"),
    ],
)
def test_the_new_zero_shot_detectors_are_charged_at_the_detect_rate(
    tmp_path, config, backend
) -> None:
    spec = ModelSpec(model=_folder(tmp_path, config))
    assert spec.backend == backend
    assert credit_kind(spec) == "detect"


def test_an_open_clip_folder_is_clip(tiny_clip: str) -> None:
    folder = tiny_clip.removeprefix("local-dir:")
    spec = ModelSpec(model=folder, task="classify")
    assert spec.backend == "clip"
    assert spec.model == tiny_clip  # open_clip reads a folder as local-dir:FOLDER
    assert ModelSpec(model=tiny_clip, task="classify-multi").backend == "clip"


@pytest.mark.parametrize(
    ("model", "backend"),
    [
        ("google/owlv2-base-patch16-ensemble", "owlv2"),
        (
            "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg",
            "mm_grounding_dino",
        ),
        ("iSEE-Laboratory/llmdet_tiny", "mm_grounding_dino"),
        ("IDEA-Research/grounding-dino-base", "grounding_dino"),
        ("facebook/sam3", "sam3"),
    ],
)
def test_a_hub_id_not_in_the_cache_is_told_by_its_name(
    model, backend, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert backend_for_model(model, "detect") == backend
    assert backend_for_model("someone/some-model", "detect") is None


def test_a_hub_id_in_the_local_cache_is_read_from_its_config(
    monkeypatch, tmp_path
) -> None:
    """An id whose name tells nothing, cached as hf download leaves it: its
    config.json decides (offline)."""
    repo = tmp_path / "models--someone--my-detector"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert ModelSpec(model="someone/my-detector").backend == "owlv2"


def test_an_image_classifier_folder_goes_to_a_trained_classifier_if_there_is_one(
    tmp_path,
) -> None:
    model = _folder(
        tmp_path,
        {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
    )
    classifiers = [
        name
        for name in ("trained", "trained_classifier")
        if name in BACKENDS and "classify" in BACKENDS[name].tasks
    ]
    if classifiers:
        assert backend_for_model(model, "classify") == classifiers[0]
    else:
        with pytest.raises(UnknownModelError, match="ViTForImageClassification"):
            model_family(model)


@pytest.mark.parametrize(
    ("config", "found"),
    [
        (None, "no config.json or open_clip_config.json"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "'bert'"),
        ({"model_type": "omdet-turbo"}, "OmDet-Turbo model"),
    ],
)
def test_a_folder_no_backend_knows_is_one_line_exit_1_before_loading(
    no_model_load, photos, tmp_path, config, found
) -> None:
    model = _folder(tmp_path, config)
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(tmp_path / "out"), "--model", model,
         *CLASSES],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1 and found in errors[0], result.output
    assert "Traceback" not in result.output


def test_a_clip_folder_cannot_detect_exit_2(
    no_model_load, photos, tmp_path, tiny_clip
) -> None:
    folder = tiny_clip.removeprefix("local-dir:")
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(tmp_path / "out"), "--model", folder,
         "--task", "detect", *CLASSES],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1, result.output
    assert "open_clip model" in errors[0] and "not --task detect" in errors[0]


def test_an_owlv2_description_past_16_tokens_is_refused_before_loading(
    no_model_load, photos, tmp_path, tiny_owlv2
) -> None:
    long = "cat: " + " ".join(["a very small striped cat"] * 5)
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(tmp_path / "out"), "--model", tiny_owlv2,
         "--class", long, "--class", "dog"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "OWLv2 reads at most 16" in errors[0], result.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("fixture", ["tiny_owlv2", "tiny_mm_grounding_dino"])
def test_label_with_only_model_dir_detects_and_exports(
    request, photos, tmp_path, fixture
) -> None:
    model = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(out), "--model", model, *CLASSES,
         "--threshold", "0.05", "--device", "cpu", "--batch-size", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    coco = COCO(str(out / "coco" / "train" / "_annotations.coco.json"))
    names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert {"person", "cat", "rocket"} <= names
    assert len(coco.getImgIds()) == 4
    assert len(coco.getAnnIds()) > 0
    assert (out / "yolo" / "data.yaml").is_file()
