"""The training steps without Prefect: a resumed training is the uninterrupted one
(weights, optimizer and schedule state, epoch counter); the labels and splits a
training reads; settings that do not fit a folder's training are refused."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.training import steps
from tasks.training.data import TrainingDataError, read_training_data
from tasks.training.recipes import resized
from tasks.training.session import build_session, drop_session
from tasks.training.settings import TrainSettings
from tasks.training.state import TrainingStateError, checkpoint_path
from tests.model_loaders.conftest import one_torch_thread  # noqa: F401 - fixture
from tests.tasks.training.synthetic import (
    CLASS_NAMES,
    TRAIN_SPLIT,
    save_tiny_rt_detr,
    write_labeled_out,
)


@pytest.fixture(scope="module")
def small_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "out"
    write_labeled_out(out, 24)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return save_tiny_rt_detr(tmp_path_factory.mktemp("base"))


def _settings(base: str, folder, epochs: int = 3) -> TrainSettings:
    return TrainSettings(
        base=base,
        out_model=str(folder),
        epochs=epochs,
        batch_size=4,
        learning_rate=2e-3,
        device="cpu",
        split=TRAIN_SPLIT,
    )


def _train(out, settings: TrainSettings, epochs: range) -> None:
    steps.start_training(str(out), settings, None, "run")
    for epoch in epochs:
        steps.train_epoch(str(out), settings, epoch, None, "run")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_resumed_training_is_the_uninterrupted_one(small_out, base, tmp_path):
    straight = _settings(base, tmp_path / "straight")
    _train(small_out, straight, range(1, 4))
    expected = steps._session(str(small_out), straight)

    resumed = _settings(base, tmp_path / "resumed")
    _train(small_out, resumed, range(1, 3))
    drop_session(resumed)  # as if the process had died after epoch 2's checkpoint
    session = build_session(read_training_data(small_out, TRAIN_SPLIT), resumed)
    assert session.epochs_done == 2
    steps_per_epoch = -(-len(session.data.train) // 4)
    adam_steps = {
        int(s["step"]) for s in session.optimizer.state_dict()["state"].values()
    }
    assert adam_steps == {2 * steps_per_epoch}
    assert session.scheduler.last_epoch == 2 * steps_per_epoch
    assert [row["epoch"] for row in session.history] == [1, 2]
    _train(small_out, resumed, range(3, 4))

    got = steps._session(str(small_out), resumed)
    assert got.epochs_done == 3
    assert [row["epoch"] for row in got.history] == [1, 2, 3]
    theirs, ours = expected.model.state_dict(), got.model.state_dict()
    assert theirs.keys() == ours.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], msg=name)
    assert got.history[2]["train_loss"] == expected.history[2]["train_loss"]

    folder = steps.finish_training(str(small_out), resumed)
    record = json.loads((tmp_path / "resumed" / "training.json").read_text())
    assert record["class_names"] == CLASS_NAMES
    assert folder == str(tmp_path / "resumed")
    assert not checkpoint_path(folder).exists()
    drop_session(straight)


def test_other_settings_never_resume_a_training(small_out, base, tmp_path):
    folder = tmp_path / "model"
    steps.start_training(str(small_out), _settings(base, folder), None, "run")
    other = _settings(base, folder, epochs=5)
    with pytest.raises(TrainingStateError, match="other settings") as error:
        steps.start_training(str(small_out), other, None, "run")
    assert "epochs 3 there, 5 now" in str(error.value)
    drop_session(_settings(base, folder))


def test_a_folder_of_other_files_is_refused(small_out, base, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingStateError, match="not empty"):
        steps.start_training(
            str(small_out), _settings(base, tmp_path / "model"), None, "run"
        )


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("train=1", "needs a val split"),
        ("train=0.5,val=x", "is not a number"),
    ],
)
def test_splits_without_val_images_are_refused(small_out, split, message):
    with pytest.raises(TrainingDataError, match=message):
        read_training_data(small_out, split)


def test_the_default_split_holds_out_a_tenth_for_val(small_out):
    data = read_training_data(small_out)
    assert (data.task, data.class_names) == ("detect", CLASS_NAMES)
    assert len(data.train) + len(data.val) == 24
    assert 1 <= len(data.val) <= 6
    assert not {e.image_id for e in data.train} & {e.image_id for e in data.val}
    boxes = sum(len(e.boxes) for e in data.train + data.val)
    assert boxes > 24  # every square of every image, one or two each


@pytest.mark.parametrize(
    ("size", "image_size", "expected"),
    [
        ({"height": 640, "width": 640}, 320, {"height": 320, "width": 320}),
        (
            {"shortest_edge": 800, "longest_edge": 1333},
            512,
            {"shortest_edge": 512, "longest_edge": 512},
        ),
        (
            {"shortest_edge": 224, "longest_edge": 1333},
            640,
            {"shortest_edge": 224, "longest_edge": 640},
        ),
        ({"shortest_edge": 224}, 160, {"shortest_edge": 160}),
        ({"height": 640, "width": 640}, None, {"height": 640, "width": 640}),
    ],
)
def test_image_size_sets_the_processor_size(size, image_size, expected):
    assert resized(size, image_size) == expected
