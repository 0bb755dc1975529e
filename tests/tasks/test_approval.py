"""The approval form, its validation, CLI input, and the saved approved settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect._internal.pydantic.v2_schema import create_v2_schema
from prefect.utilities.schema_tools import ValidationError, validate

from model_loaders.ontology import Ontology
from tasks.approval import (
    ApprovalError,
    ApprovedSettings,
    approval_form,
    approved_path,
    decide,
    load_approved,
    now_utc,
    run_input_from_options,
    save_approved,
)
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds

SETTINGS = LabelSettings(
    ontology=Ontology.from_class_options(["aluminum can: a soda can", "person"]),
    thresholds=Thresholds(default=0.35, per_class={"person": 0.5}),
)


def _schema(settings: LabelSettings = SETTINGS) -> dict:
    """The JSON schema Prefect saves for the form, as RunInput.save builds it."""
    form = approval_form(settings)
    return create_v2_schema(form.__name__, model_base=form)


def test_form_has_one_number_per_class_with_current_defaults():
    properties = _schema()["properties"]
    can, person = properties["aluminum can"], properties["person"]
    assert (can["type"], can["minimum"], can["maximum"]) == ("number", 0, 1)
    assert (can["default"], person["default"]) == (0.35, 0.5)
    assert properties["aluminum can (descriptions)"]["default"] == "a soda can"
    assert properties["decision"]["enum"] == ["approve", "revise"]


@pytest.mark.parametrize(
    ("run_input", "reason"),
    [
        ({}, "'decision' is a required property"),  # an empty resume is not approval
        ({"person": 0.4}, "'decision' is a required property"),
        ({"decision": "approve", "persn": 0.4}, "'persn' was unexpected"),
        ({"decision": "approve", "person": 1.5}, "greater than the maximum"),
        ({"decision": "approve", "person": -0.1}, "less than the minimum"),
        ({"decision": "approve", "person": "high"}, "not of type 'number'"),
        ({"decision": "maybe"}, "is not one of"),
    ],
)
def test_bad_answers_are_refused_by_the_schema(run_input, reason):
    with pytest.raises(ValidationError, match=reason):
        validate(run_input, _schema(), raise_on_error=True)


def test_an_answer_becomes_thresholds_for_every_class():
    form = approval_form(SETTINGS)
    answer = form(**{"decision": "approve", "aluminum can": 0.6})
    decision = decide(SETTINGS, answer)
    assert decision.decision == "approve"
    assert decision.thresholds.per_class == {"aluminum can": 0.6, "person": 0.5}
    assert not decision.descriptions_changed
    assert decision.apply(SETTINGS).thresholds.for_class("aluminum can") == 0.6


def test_new_descriptions_change_the_ontology_and_bad_ones_are_refused():
    form = approval_form(SETTINGS)
    answer = form(**{"decision": "revise", "person (descriptions)": "man; woman"})
    decision = decide(SETTINGS, answer)
    assert decision.descriptions_changed
    assert decision.apply(SETTINGS).ontology.classes[1].descriptions == ("man", "woman")
    duplicate = form(**{"decision": "revise", "person (descriptions)": "a soda can"})
    with pytest.raises(ApprovalError, match="descriptions"):
        decide(SETTINGS, duplicate)
    with pytest.raises(ApprovalError, match="empty"):
        decide(SETTINGS, form(**{"decision": "revise", "person (descriptions)": ";"}))


def test_a_class_named_like_a_control_field_keeps_both():
    settings = LabelSettings(ontology=Ontology.from_class_options(["decision", "cat"]))
    properties = _schema(settings)["properties"]
    assert "decision (threshold)" in properties and "decision" in properties
    answer = approval_form(settings)(
        **{"decision": "approve", "decision (threshold)": 0.9}
    )
    assert decide(settings, answer).thresholds.per_class["decision"] == 0.9


def test_cli_options_become_a_valid_run_input():
    run_input = run_input_from_options(
        _schema(),
        thresholds=["0.4", "person=0.45"],
        descriptions=["aluminum can: soda can; tin can"],
        decision="revise",
        approved_by="ana",
    )
    assert run_input == {
        "decision": "revise",
        "approved_by": "ana",
        "aluminum can": 0.4,
        "person": 0.45,
        "aluminum can (descriptions)": "soda can; tin can",
    }
    validate(run_input, _schema(), raise_on_error=True)


@pytest.mark.parametrize(
    ("thresholds", "descriptions", "message"),
    [
        (["cann=0.4"], [], r"unknown class\(es\) \['cann'\]"),
        (["person=1.2"], [], "between 0 and 1"),
        (["person=-0.2"], [], "between 0 and 1"),
        (["person=high"], [], "not a number"),
        ([], ["cat: a cat"], "unknown class 'cat'"),
        ([], ["person"], "write 'class: description"),
    ],
)
def test_bad_cli_options_are_refused_before_sending(thresholds, descriptions, message):
    with pytest.raises(ApprovalError, match=message):
        run_input_from_options(
            _schema(),
            thresholds=thresholds,
            descriptions=descriptions,
            decision="approve",
            approved_by="x",
        )


def test_a_form_that_is_not_ours_is_refused():
    with pytest.raises(ApprovalError, match="not waiting for an autolabel approval"):
        run_input_from_options(
            {"properties": {"x": {"type": "number"}}},
            thresholds=[],
            descriptions=[],
            decision="approve",
            approved_by="x",
        )


def test_approved_settings_round_trip(tmp_path: Path):
    approved = ApprovedSettings(
        settings=SETTINGS,
        approved_by="ana@host (autolabel approve)",
        approved_at=now_utc(),
        flow_run_id="run-1",
        sample=["a.jpg"],
        sample_seed=0,
        preview_counts={"aluminum can": (1, 4), "person": (0, 2)},
    )
    path = save_approved(tmp_path, approved)
    assert path == approved_path(tmp_path) == tmp_path / "approved.json"
    assert load_approved(tmp_path) == approved


def test_missing_or_broken_approved_settings_are_clear_errors(tmp_path: Path):
    with pytest.raises(ApprovalError, match="no approved settings"):
        load_approved(tmp_path)
    approved_path(tmp_path).write_text("{not json")
    with pytest.raises(ApprovalError, match="not valid approved settings"):
        load_approved(tmp_path)
