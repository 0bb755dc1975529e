"""The ontology: which classes to label and which words the model is shown for each.

A class has a name (what lands in the exports) and one or more descriptions (the prompts
the model sees). Several descriptions may map to one class; by default the description
is the class name itself. The ontology is validated before any model is loaded, so a
typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)


class OntologyError(ValueError):
    """An ontology that cannot be used, with a message meant for the user."""


def _normalise_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().split())


class OntologyClass(BaseModel):
    """One class: its exported name and the descriptions the model is prompted with."""

    model_config = ConfigDict(frozen=True)

    name: str
    descriptions: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, name: str) -> str:
        name = name.strip()
        if not name:
            raise OntologyError("a class name is empty")
        return name

    @model_validator(mode="after")
    def _default_description(self) -> OntologyClass:
        descriptions = tuple(d.strip() for d in self.descriptions)
        if any(not d for d in descriptions):
            raise OntologyError(f"class {self.name!r} has an empty description")
        if not descriptions:
            descriptions = (self.name,)
        object.__setattr__(self, "descriptions", descriptions)
        return self


class Ontology(BaseModel):
    """An ordered list of classes; a class's position is its 0-based class id."""

    model_config = ConfigDict(frozen=True)

    classes: tuple[OntologyClass, ...]

    @model_validator(mode="after")
    def _validate(self) -> Ontology:
        if not self.classes:
            raise OntologyError(
                "the ontology has no classes: give at least one --class"
            )
        seen_names: dict[str, str] = {}
        for ontology_class in self.classes:
            key = ontology_class.name.lower()
            if key in seen_names:
                raise OntologyError(f"class {ontology_class.name!r} is given twice")
            seen_names[key] = ontology_class.name
        prompt_owner: dict[str, str] = {}
        for ontology_class in self.classes:
            for prompt in ontology_class.descriptions:
                key = _normalise_prompt(prompt)
                owner = prompt_owner.setdefault(key, ontology_class.name)
                if owner != ontology_class.name:
                    raise OntologyError(
                        f"the description {prompt!r} is used for two classes, "
                        f"{owner!r} and "
                        f"{ontology_class.name!r}: a detection could not be told apart"
                    )
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def class_id(self, name: str) -> int:
        """The 0-based id of a class, raising OntologyError for an unknown name."""
        for index, ontology_class in enumerate(self.classes):
            if ontology_class.name == name:
                return index
        raise OntologyError(f"unknown class {name!r}; classes are {self.class_names}")

    def prompts(self) -> list[tuple[str, int]]:
        """Every (description, class id) pair, in ontology order."""
        return [
            (prompt, class_id)
            for class_id, ontology_class in enumerate(self.classes)
            for prompt in ontology_class.descriptions
        ]

    @classmethod
    def from_class_options(cls, options: list[str]) -> Ontology:
        """Build from repeated ``--class "name: description; other description"``
        options."""
        return build_ontology([parse_class_option(option) for option in options])

    @classmethod
    def from_file(cls, path: str | Path) -> Ontology:
        """Load a YAML or JSON file (see ``ontology_from_data`` for the accepted
        shapes)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise OntologyError(
                f"cannot read ontology file {path}: {error.strerror}"
            ) from None
        try:
            data = (
                json.loads(text)
                if path.suffix.lower() == ".json"
                else yaml.safe_load(text)
            )
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise OntologyError(f"ontology file {path} is not valid: {error}") from None
        try:
            return ontology_from_data(data)
        except OntologyError as error:
            raise OntologyError(f"ontology file {path}: {error}") from None

    def to_data(self) -> dict[str, list[str]]:
        """A plain mapping class name -> descriptions, the form ``ontology_from_data``
        reads."""
        return {c.name: list(c.descriptions) for c in self.classes}


def parse_class_option(option: str) -> OntologyClass:
    """Parse ``"name"`` or ``"name: description"`` or ``"name: one; two"``.

    The name ends at the first colon; descriptions are separated by semicolons.
    """
    name, _, descriptions = option.partition(":")
    parts = tuple(d for d in (p.strip() for p in descriptions.split(";")) if d)
    if ":" in option and not parts:
        raise OntologyError(
            f"--class {option!r} has a colon but no description after it"
        )
    return _unwrapped(OntologyClass, name=name, descriptions=parts)


def ontology_from_data(data: Any) -> Ontology:
    """Build an ontology from parsed YAML/JSON.

    Accepted shapes (optionally under a top-level ``classes`` key):
    - a mapping ``{class name: description | [descriptions] | null}``;
    - a list of class names or of ``{name: ..., description(s): ...}`` entries.
    """
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):
        entries = [_class_from_entry(name, value) for name, value in data.items()]
    elif isinstance(data, list):
        entries = [_class_from_list_item(item) for item in data]
    else:
        raise OntologyError(
            "expected a mapping of class -> description(s) or a list of classes"
        )
    return build_ontology(entries)


def build_ontology(classes: list[OntologyClass]) -> Ontology:
    """Construct an Ontology, turning pydantic's wrapped error into a plain
    OntologyError."""
    return _unwrapped(Ontology, classes=tuple(classes))


def _unwrapped(model: type[BaseModel], **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        original = first.get("ctx", {}).get("error")
        message = str(original) if isinstance(original, OntologyError) else first["msg"]
        raise OntologyError(message) from None


def _class_from_entry(name: Any, value: Any) -> OntologyClass:
    if value is None:
        descriptions: list[Any] = []
    elif isinstance(value, str):
        descriptions = [value]
    elif isinstance(value, list):
        descriptions = value
    else:
        raise OntologyError(
            f"class {name!r}: descriptions must be text or a list of text"
        )
    if not all(isinstance(d, str) for d in descriptions):
        raise OntologyError(f"class {name!r}: descriptions must be text")
    return _unwrapped(
        OntologyClass, name=str(name or ""), descriptions=tuple(descriptions)
    )


def _class_from_list_item(item: Any) -> OntologyClass:
    if isinstance(item, str):
        return parse_class_option(item)
    if isinstance(item, dict) and "name" in item:
        value = item.get("descriptions", item.get("description"))
        return _class_from_entry(item["name"], value)
    raise OntologyError(
        f"cannot read class entry {item!r}: expected text or {{name: ...}}"
    )
