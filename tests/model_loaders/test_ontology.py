"""Ontology parsing and validation: bad ontologies are refused with a message naming the
problem, before any model is loaded."""

from __future__ import annotations

import json

import pytest

from model_loaders.ontology import Ontology, OntologyError, ontology_from_data


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["person"], {"person": ["person"]}),
        (
            ["aluminum can: a shiny metal drink can", "person"],
            {"aluminum can": ["a shiny metal drink can"], "person": ["person"]},
        ),
        (["can: a soda can; a beer can"], {"can": ["a soda can", "a beer can"]}),
        (["  cat  :  a small cat  "], {"cat": ["a small cat"]}),
    ],
)
def test_class_options_become_classes_with_descriptions(options, expected):
    assert Ontology.from_class_options(options).to_data() == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "no classes"),
        ([": a thing"], "class name is empty"),
        (["   "], "class name is empty"),
        (["cat", "Cat"], "given twice"),
        (["cat", "kitten: cat"], "used for two classes"),
        (["dog: A  Dog", "puppy: a dog"], "used for two classes"),
        (["cat:"], "no description"),
    ],
)
def test_invalid_ontologies_are_refused_with_a_clear_message(options, message):
    with pytest.raises(OntologyError, match=message):
        Ontology.from_class_options(options)


def test_class_ids_follow_the_order_given():
    ontology = Ontology.from_class_options(["b", "a: x; y"])
    assert ontology.class_names == ["b", "a"]
    assert ontology.class_id("a") == 1
    assert ontology.prompts() == [("b", 0), ("x", 1), ("y", 1)]
    with pytest.raises(OntologyError, match="unknown class 'c'"):
        ontology.class_id("c")


@pytest.mark.parametrize(
    "data",
    [
        {"can": "a soda can", "person": None, "car": ["car", "truck"]},
        {"classes": {"can": "a soda can", "person": None, "car": ["car", "truck"]}},
        [
            "can: a soda can",
            {"name": "person"},
            {"name": "car", "descriptions": ["car", "truck"]},
        ],
    ],
)
def test_file_shapes_all_mean_the_same_ontology(data):
    assert ontology_from_data(data).to_data() == {
        "can": ["a soda can"],
        "person": ["person"],
        "car": ["car", "truck"],
    }


def test_yaml_and_json_files_load(tmp_path):
    (tmp_path / "o.yaml").write_text("can: a soda can\nperson:\n", encoding="utf-8")
    (tmp_path / "o.json").write_text(json.dumps({"can": "a soda can", "person": None}))
    expected = {"can": ["a soda can"], "person": ["person"]}
    assert Ontology.from_file(tmp_path / "o.yaml").to_data() == expected
    assert Ontology.from_file(tmp_path / "o.json").to_data() == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("can: [1, 2]", "descriptions must be text"),
        ("- 3\n", "cannot read class entry"),
        ("just a string", "expected a mapping"),
        ("can: a\nbottle: a\n", "used for two classes"),
        ("{unclosed", "not valid"),
    ],
)
def test_bad_files_name_the_file_and_the_reason(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OntologyError, match=message) as error:
        Ontology.from_file(path)
    assert str(path) in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(OntologyError, match="cannot read ontology file .*nope.yaml"):
        Ontology.from_file(tmp_path / "nope.yaml")
