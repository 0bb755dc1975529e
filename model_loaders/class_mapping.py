"""Mapping a trained model's own class names onto the ontology.

A model trained earlier (a local checkpoint or a Roboflow-hosted model) predicts a fixed
set of classes under its own names. Labels must carry the ontology's classes, so each
model class is mapped to at most one ontology class:

1. an explicit ``--map model_name=class`` pair (model name exact, else ignoring case);
2. otherwise the ontology class of the same name, compared case-insensitively;
3. otherwise the model class is dropped: its detections never become labels.

Several model classes may map to one ontology class (``car=vehicle``, ``bus=vehicle``).
Descriptions are not consulted: a closed-set model is not prompted, so only names can
match. Every detection keeps the model's own class name in ``data["prompt"]``, so a
label table still says which model class produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from model_loaders.ontology import Ontology

logger = logging.getLogger(__name__)
_SHOWN_NAMES = 30  # model classes listed in an error message before "..."


class ClassMappingError(ValueError):
    """A ``--map`` option or a mapping that cannot work; the message says which."""


def parse_class_map(options: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``--map model_name=class`` options into (model name, class) pairs.

    The first ``=`` splits the pair, so an ontology class name may contain ``=``; both
    sides are stripped and must not be empty. Pairs are only checked against a model and
    an ontology by ``ClassMapping.build``.
    """
    pairs = []
    for option in options:
        model_name, has_equals, class_name = option.partition("=")
        model_name, class_name = model_name.strip(), class_name.strip()
        if not has_equals:
            raise ClassMappingError(
                f"--map {option!r}: expected MODEL_CLASS=CLASS, e.g. --map puppy=dog"
            )
        if not model_name or not class_name:
            missing = "model class" if not model_name else "ontology class"
            raise ClassMappingError(f"--map {option!r}: the {missing} is empty")
        pairs.append((model_name, class_name))
    return tuple(pairs)


@dataclass(frozen=True, eq=False)
class ClassMapping:
    """Model class name -> ontology class id, built and validated once per ontology."""

    ontology: Ontology
    explicit: dict[str, int]  # model class name as given in --map -> ontology id
    unmatched: tuple[str, ...]  # ontology classes no known model class maps to
    _resolved: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        ontology: Ontology,
        model_classes: Sequence[str] | None,
        pairs: Sequence[tuple[str, str]] = (),
    ) -> ClassMapping:
        """Validate ``pairs`` against the ontology and (when known) the model's classes.

        Args:
            ontology: the classes labels are made of.
            model_classes: every class name the model can predict, or None when they
                cannot be known up front (then model names in ``pairs`` are not
                checked, and nothing matching is not an error).
            pairs: explicit (model class name, ontology class name) pairs.

        Raises:
            ClassMappingError: a pair names an unknown ontology or model class, a model
                class is mapped to two classes, or no model class maps to any class.
        """
        by_name = {name.casefold(): i for i, name in enumerate(ontology.class_names)}
        explicit: dict[str, int] = {}
        targets: dict[str, int] = {}  # the model class each pair names -> class id
        for model_name, class_name in pairs:
            class_id = by_name.get(class_name.casefold())
            if class_id is None:
                raise ClassMappingError(
                    f"--map {model_name}={class_name}: {class_name!r} is not an "
                    f"ontology class; classes are {ontology.class_names}"
                )
            target = _model_class(model_name, model_classes)
            if target is None:
                raise ClassMappingError(
                    f"--map {model_name}={class_name}: the model has no class "
                    f"{model_name!r}; its classes are {_shown(model_classes or [])}"
                )
            previous = targets.get(target)
            if previous is not None and previous != class_id:
                raise ClassMappingError(
                    f"--map: model class {model_name!r} is mapped to both "
                    f"{ontology.class_names[previous]!r} and {class_name!r}"
                )
            targets[target] = class_id
            explicit[model_name] = class_id
        names = ontology.class_names
        if model_classes is None:
            return cls(ontology=ontology, explicit=explicit, unmatched=())
        reached = {_resolve(explicit, names, name) for name in model_classes} - {None}
        if not reached:
            raise ClassMappingError(
                f"none of the model's classes {_shown(model_classes)} matches an "
                f"ontology class {names}: name the classes alike or add "
                "--map MODEL_CLASS=CLASS"
            )
        unmatched = tuple(name for i, name in enumerate(names) if i not in reached)
        return cls(ontology=ontology, explicit=explicit, unmatched=unmatched)

    def class_id(self, model_name: str) -> int | None:
        """The ontology id ``model_name`` maps to, or None when it is dropped."""
        if model_name not in self._resolved:
            class_id = _resolve(self.explicit, self.ontology.class_names, model_name)
            self._resolved[model_name] = -1 if class_id is None else class_id
        resolved = self._resolved[model_name]
        return None if resolved < 0 else resolved

    def to_detections(
        self,
        *,
        xyxy: np.ndarray,
        confidence: np.ndarray,
        model_names: Sequence[str],
        resolution_wh: tuple[int, int],
        confidence_floor: float,
    ) -> sv.Detections:
        """The mapped detections of one image, at or above the floor, clipped to it.

        Rows whose model class is dropped are removed; the rest get the ontology's
        ``class_id`` and ``class_name`` and keep the model's name as ``prompt``.
        """
        names = [str(name) for name in model_names]
        class_ids = np.array(
            [-1 if (i := self.class_id(n)) is None else i for n in names], dtype=int
        )
        confidence = np.asarray(confidence, dtype=np.float32).reshape(-1)
        keep = (class_ids >= 0) & (confidence >= confidence_floor)
        xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)[keep]
        class_ids = class_ids[keep]
        return sv.Detections(
            xyxy=sv.clip_boxes(xyxy, resolution_wh=resolution_wh).astype(np.float32),
            confidence=confidence[keep],
            class_id=class_ids,
            data={
                "class_name": np.array(
                    [self.ontology.class_names[i] for i in class_ids], dtype=str
                ),
                "prompt": np.array(
                    [n for n, k in zip(names, keep, strict=True) if k], dtype=str
                ),
            },
        )


class ClassMapper:
    """One model's classes and ``--map`` pairs; builds each ontology's mapping once.

    The backends get the ontology only at predict time, so the mapping is built (and
    validated) on the first batch of an ontology, then reused; an ontology class that
    no model class reaches is logged once as a warning, since it can never be labeled.
    """

    def __init__(
        self,
        model_classes: Sequence[str] | None,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str,
    ) -> None:
        self.model_classes = None if model_classes is None else tuple(model_classes)
        self.pairs = tuple(pairs)
        self.model = model
        self._mappings: dict[Ontology, ClassMapping] = {}

    def for_ontology(self, ontology: Ontology) -> ClassMapping:
        """The validated mapping for ``ontology``; raises ClassMappingError."""
        mapping = self._mappings.get(ontology)
        if mapping is None:
            mapping = ClassMapping.build(ontology, self.model_classes, self.pairs)
            if mapping.unmatched:
                logger.warning(
                    "%s has no class for %s: those classes get no labels (add --map "
                    "MODEL_CLASS=CLASS to map one)",
                    self.model,
                    list(mapping.unmatched),
                )
            self._mappings[ontology] = mapping
        return mapping


def _resolve(
    explicit: dict[str, int], ontology_names: list[str], name: str
) -> int | None:
    """An explicit pair wins over a same-named ontology class."""
    class_id = _lookup(explicit, name)
    if class_id is None:
        class_id = _lookup({n: i for i, n in enumerate(ontology_names)}, name)
    return class_id


def _lookup(table: dict[str, int], name: str) -> int | None:
    """Exact name first, then case-insensitive: 'Car' and 'car' may both exist."""
    if name in table:
        return table[name]
    folded = name.casefold()
    for candidate, value in table.items():
        if candidate.casefold() == folded:
            return value
    return None


def _model_class(name: str, model_classes: Sequence[str] | None) -> str | None:
    """The model class a ``--map`` name means: exact, else ignoring case.

    With no known class list, names equal ignoring case mean the same class.
    """
    if model_classes is None:
        return name.casefold()
    if name in model_classes:
        return name
    folded = name.casefold()
    return next((c for c in model_classes if c.casefold() == folded), None)


def _shown(names: Sequence[str]) -> str:
    unique = list(dict.fromkeys(names))
    shown = ", ".join(repr(n) for n in unique[:_SHOWN_NAMES])
    more = (
        f", ... ({len(unique) - _SHOWN_NAMES} more)"
        if len(unique) > _SHOWN_NAMES
        else ""
    )
    return f"[{shown}{more}]"
