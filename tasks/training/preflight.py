"""The checks a training run passes before any model loads or any epoch runs: the
base is a model of the labels' kind, and the ``--out-model`` folder is new, empty, or
this same training (to resume or find done). ``autolabel train`` and the review page
both call them, after reading the labels (``read_training_data``), so a bad choice is
one line either way."""

from __future__ import annotations

from tasks.training.base import base_kind, check_base_fits
from tasks.training.data import TrainingData
from tasks.training.settings import TrainSettings
from tasks.training.state import TrainingState, training_state


def check_training_fits(settings: TrainSettings, data: TrainingData) -> TrainingState:
    """Refuse a base of the wrong kind or an ``out_model`` folder holding something
    else; reads the base's config only and writes nothing.

    Raises:
        ModelLoadError: The base's config cannot be found or read.
        BaseModelError: The base is neither a detector nor a classifier, or not the
            kind the labels need.
        TrainingStateError: ``out_model`` holds other files or another training.
    """
    check_base_fits(
        settings.base, base_kind(settings.base), data.task, data.classes_from
    )
    return training_state(
        settings.out_model, settings.fingerprint(data.task, data.class_names)
    )
