"""Model class names -> ontology classes: parsing ``--map``, validation, and the mapped
detections every trained-model backend returns."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model_loaders.class_mapping import (
    ClassMapper,
    ClassMapping,
    ClassMappingError,
    parse_class_map,
)
from model_loaders.ontology import Ontology

ONTOLOGY = Ontology.from_class_options(["person", "dog: a dog; puppy", "vehicle"])
MODEL_CLASSES = ["Person", "canine", "car", "bus", "cat"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], ()),
        (["canine=dog"], (("canine", "dog"),)),
        ([" car = vehicle ", "bus=vehicle"], (("car", "vehicle"), ("bus", "vehicle"))),
        (["a=b=c"], (("a", "b=c"),)),  # the first '=' splits
    ],
)
def test_parse_class_map(options, expected):
    assert parse_class_map(options) == expected


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("canine", "expected MODEL_CLASS=CLASS"),
        ("=dog", "the model class is empty"),
        ("canine= ", "the ontology class is empty"),
    ],
)
def test_parse_class_map_refuses_malformed_options(option, message):
    with pytest.raises(ClassMappingError, match=message):
        parse_class_map([option])


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # Same name ignoring case; unmapped model classes dropped.
        ((), {"Person": 0, "canine": None, "car": None, "bus": None, "cat": None}),
        # Explicit pairs, several model classes onto one ontology class.
        (
            (("canine", "dog"), ("car", "vehicle"), ("BUS", "Vehicle")),
            {"Person": 0, "canine": 1, "car": 2, "bus": 2, "cat": None},
        ),
        # An explicit pair wins over a same-named ontology class.
        ((("person", "vehicle"),), {"Person": 2, "canine": None}),
    ],
)
def test_class_ids(pairs, expected):
    mapping = ClassMapping.build(ONTOLOGY, MODEL_CLASSES, pairs)
    assert {name: mapping.class_id(name) for name in expected} == expected


def test_exact_model_name_wins_over_a_case_insensitive_one():
    mapping = ClassMapping.build(
        ONTOLOGY, ["Car", "car"], (("Car", "vehicle"), ("car", "person"))
    )
    assert mapping.class_id("Car") == 2
    assert mapping.class_id("car") == 0


@pytest.mark.parametrize(
    ("model_classes", "pairs", "message"),
    [
        (MODEL_CLASSES, (("canine", "doggo"),), "'doggo' is not an ontology class"),
        (MODEL_CLASSES, (("kitty", "dog"),), "the model has no class 'kitty'"),
        (
            MODEL_CLASSES,
            (("car", "vehicle"), ("CAR", "dog")),
            "mapped to both 'vehicle' and 'dog'",
        ),
        (["cat", "horse"], (), "none of the model's classes"),
        (None, (("canine", "doggo"),), "'doggo' is not an ontology class"),
    ],
)
def test_invalid_mappings_are_refused(model_classes, pairs, message):
    with pytest.raises(ClassMappingError, match=message):
        ClassMapping.build(ONTOLOGY, model_classes, pairs)


def test_unknown_model_classes_pass_when_the_model_list_is_unknown():
    mapping = ClassMapping.build(ONTOLOGY, None, (("kitty", "dog"),))
    assert mapping.class_id("kitty") == 1
    assert mapping.class_id("horse") is None
    assert mapping.unmatched == ()


def test_unmatched_ontology_classes_are_reported_once(caplog):
    mapper = ClassMapper(MODEL_CLASSES, (("canine", "dog"),), model="m")
    with caplog.at_level(logging.WARNING, logger="model_loaders.class_mapping"):
        first = mapper.for_ontology(ONTOLOGY)
        assert mapper.for_ontology(ONTOLOGY) is first
    assert first.unmatched == ("vehicle",)
    assert [r.getMessage() for r in caplog.records] == [
        "m has no class for ['vehicle']: those classes get no labels (add --map "
        "MODEL_CLASS=CLASS to map one)"
    ]


def test_to_detections_maps_drops_filters_and_clips():
    mapping = ClassMapping.build(ONTOLOGY, MODEL_CLASSES, (("canine", "dog"),))
    detections = mapping.to_detections(
        xyxy=np.array(
            [[-5, 2, 30, 40], [1, 1, 5, 5], [2, 2, 200, 90], [0, 0, 1, 1]], dtype=float
        ),
        confidence=np.array([0.9, 0.8, 0.3, 0.29]),
        model_names=["Person", "cat", "canine", "canine"],
        resolution_wh=(100, 80),
        confidence_floor=0.3,  # inclusive
    )
    np.testing.assert_allclose(detections.xyxy, [[0, 2, 30, 40], [2, 2, 100, 80]])
    np.testing.assert_allclose(detections.confidence, [0.9, 0.3])
    assert detections.class_id.tolist() == [0, 1]
    assert detections.data["class_name"].tolist() == ["person", "dog"]
    assert detections.data["prompt"].tolist() == ["Person", "canine"]
    assert detections.xyxy.dtype == np.float32


def test_to_detections_of_nothing_has_the_same_fields():
    mapping = ClassMapping.build(ONTOLOGY, MODEL_CLASSES)
    empty = mapping.to_detections(
        xyxy=np.zeros((0, 4)),
        confidence=np.zeros(0),
        model_names=[],
        resolution_wh=(10, 10),
        confidence_floor=0.0,
    )
    assert len(empty) == 0
    assert set(empty.data) == {"class_name", "prompt"}
    assert empty.xyxy.shape == (0, 4)
