"""A model trained in Roboflow, called through its hosted inference, as the labeler.

``--model roboflow://WORKSPACE/PROJECT/VERSION`` names the trained version; the roboflow
SDK opens it (key check, project and version metadata) and its
``ObjectDetectionModel.predict`` posts each image, base64 JPEG, to
``{OBJECT_DETECTION_URL}/{project}/{version}?api_key=...&confidence=..&overlap=..``
(``OBJECT_DETECTION_URL``/``API_URL`` are read from the environment when the SDK is
imported; ``roboflow.config.refresh_region_urls()`` applies a later change).

The same-dataset rule. Roboflow Auto Label only labels with "models from the same
dataset as your Annotation Batch"; so does this backend: it needs the dataset being
labeled (``dataset``: ``roboflow://WORKSPACE/PROJECT``, e.g. the labeling source or the
project the labels are uploaded to) and refuses, before any network call, a model of
another workspace or project, or no dataset at all. Limits: only identities are
compared. A local folder cannot prove it belongs to the project it names, a model
trained on a fork or copy of the project is refused although its classes may fit, and
any version of the same project is accepted, older or newer, whatever its classes.

The API key, retries and redaction are the shared Roboflow client's
(``clients.roboflow``), as for a Roboflow source or upload: the key comes from
``ROBOFLOW_API_KEY``, the Prefect Secret block ``roboflow-api-key`` or a ``roboflow
login`` config; it never reaches a message or a log record, and this class's repr names
only the model.

Errors: 408, 429, 5xx, connection errors and timeouts are retried with exponential
backoff (bounded, ``Retry-After`` honoured up to a cap); other HTTP errors fail at once.
The SDK's own key check retries non-200 answers 5 times, 1 s apart. The SDK sets no
request timeout, so a server that accepts a connection and never answers blocks that
image.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
from PIL import Image

from clients.roboflow import (
    SCHEME,
    RetryPolicy,
    RoboflowClient,
    RoboflowError,
    RoboflowRequestError,
)
from model_loaders.class_mapping import ClassMapper, ClassMapping, parse_class_map
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelLoadError, ModelSpec, Predictions

OBJECT_DETECTION = "object-detection"
logger = logging.getLogger(__name__)


class HostedInferenceError(RoboflowRequestError):
    """Hosted inference failed for good; the message has no API key."""


@dataclass(frozen=True)
class RoboflowModelRef:
    """``roboflow://workspace/project/version``."""

    workspace: str
    project: str
    version: int

    @classmethod
    def parse(cls, text: str) -> RoboflowModelRef:
        parts = _roboflow_path(text, what="--model")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ModelLoadError(
                f"--model {text}: expected {SCHEME}WORKSPACE/PROJECT/VERSION "
                "(VERSION a number)"
            )
        return cls(parts[0], parts[1], int(parts[2]))

    @property
    def dataset(self) -> str:
        return f"{self.workspace}/{self.project}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.dataset}/{self.version}"


def parse_dataset(text: str) -> str:
    """``roboflow://workspace/project[/version]`` -> ``workspace/project``."""
    parts = _roboflow_path(text, what="dataset")
    if len(parts) not in (2, 3):
        raise ModelLoadError(
            f"dataset {text!r}: expected {SCHEME}WORKSPACE/PROJECT, the Roboflow "
            "project being labeled"
        )
    return f"{parts[0]}/{parts[1]}"


def check_same_dataset(model: RoboflowModelRef, dataset: str | None) -> None:
    """Refuse a model of another dataset than the one labeled (Roboflow's own rule)."""
    if dataset is None:
        raise ModelLoadError(
            f"{model}: a Roboflow-hosted model labels only its own project's images; "
            f"say which dataset is labeled ({SCHEME}WORKSPACE/PROJECT, the source or "
            "the project the labels go to)"
        )
    labeled = parse_dataset(dataset)
    if labeled.casefold() != model.dataset.casefold():
        raise ModelLoadError(
            f"{model} was trained on {model.dataset}, but this run labels {labeled}: "
            "Roboflow labels only with models of the same dataset. Use a version "
            f"trained on {labeled}, or a local checkpoint (--model PATH)"
        )


class RoboflowHostedModel:
    """Detection by a Roboflow-trained model version; see the module docstring."""

    def __init__(
        self,
        sdk_model: Any,
        ref: RoboflowModelRef,
        spec: ModelSpec,
        *,
        client: RoboflowClient,
        class_map: Sequence[tuple[str, str]] = (),
        overlap: int = 50,
        concurrency: int = 4,
    ) -> None:
        self._sdk_model = sdk_model
        self._client = client
        self.ref = ref
        self.spec = spec
        self.overlap = overlap
        self.concurrency = concurrency
        # The hosted model's class list is not published up front (the project's
        # current classes may differ from the version's): names are mapped as they come.
        self.mapper = ClassMapper(None, class_map, model=str(ref))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ref})"

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        *,
        dataset: str | None = None,
        class_map: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        overlap: int = 50,
        concurrency: int = 4,
    ) -> RoboflowHostedModel:
        """Check the dataset rule, then open the version's hosted model.

        Args:
            spec: ``model`` is ``roboflow://workspace/project/version``.
            dataset: the dataset being labeled, ``roboflow://workspace/project``;
                default: the spec's ``dataset`` field. Required (see module docstring).
            class_map: ``--map model_name=class`` options; default: the spec's.
            retry: retry policy for 429/5xx/connection errors.
            overlap: server-side NMS overlap in percent (Roboflow's parameter); our
                own NMS runs afterwards as for every backend.
            concurrency: images in flight at once.
        """
        ref = RoboflowModelRef.parse(spec.model)
        check_same_dataset(ref, dataset or getattr(spec.options, "dataset", None))
        pairs = parse_class_map(
            getattr(spec.options, "class_map", ()) if class_map is None else class_map
        )
        try:
            client = RoboflowClient.resolve(
                workspace=ref.workspace, retry=retry or RetryPolicy()
            )
        except RoboflowError as error:  # its message is safe: no key
            raise ModelLoadError(str(error)) from None
        sdk_model, project_classes = _open_version(ref, client)
        unknown = [m for m, _ in pairs if m.casefold() not in project_classes]
        if project_classes and unknown:
            logger.warning(
                "%s: --map names %s, which the project's classes do not include",
                ref,
                unknown,
            )
        return cls(
            sdk_model,
            ref,
            spec,
            client=client,
            class_map=pairs,
            overlap=overlap,
            concurrency=concurrency,
        )

    def class_mapping(self, ontology: Ontology) -> ClassMapping:
        """The model-class -> ontology mapping (validated; raises ClassMappingError)."""
        return self.mapper.for_ontology(ontology)

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        mapping = self.class_mapping(ontology)
        if not images:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(images))) as pool:
            responses = list(
                pool.map(lambda image: self._infer(image, confidence_floor), images)
            )
        return [
            predictions_to_detections(
                predictions,
                mapping,
                resolution_wh=(image.width, image.height),
                confidence_floor=confidence_floor,
            )
            for image, predictions in zip(images, responses, strict=True)
        ]

    def _infer(self, image: Image.Image, confidence_floor: float) -> list[dict]:
        """The hosted model's predictions for one image, retried when retryable."""
        # The SDK model rewrites its own URL on every predict: one copy per call keeps
        # concurrent calls from sending each other's parameters.
        model = copy.copy(self._sdk_model)
        # The SDK passes confidence in whole percent: round down so that no candidate
        # at or above the floor is lost; the floor is applied exactly afterwards.
        percent = min(max(math.floor(confidence_floor * 100), 0), 100)
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        result = self._client.call(
            lambda: model.predict(bgr, confidence=percent, overlap=self.overlap),
            what=f"get hosted predictions of {self.ref}",
            error=HostedInferenceError,
        )
        return list(result.json()["predictions"])


def predictions_to_detections(
    predictions: Sequence[dict],
    mapping: ClassMapping,
    *,
    resolution_wh: tuple[int, int],
    confidence_floor: float,
) -> sv.Detections:
    """Roboflow predictions (box center x/y, width, height in pixels) -> Detections."""
    boxes = np.array(
        [[p["x"], p["y"], p["width"], p["height"]] for p in predictions],
        dtype=np.float64,
    ).reshape(-1, 4)
    center, size = boxes[:, :2], boxes[:, 2:]
    return mapping.to_detections(
        xyxy=np.hstack([center - size / 2, center + size / 2]),
        confidence=np.array([p["confidence"] for p in predictions], dtype=np.float32),
        model_names=[str(p["class"]) for p in predictions],
        resolution_wh=resolution_wh,
        confidence_floor=confidence_floor,
    )


def _open_version(
    ref: RoboflowModelRef, client: RoboflowClient
) -> tuple[Any, set[str]]:
    """The SDK's hosted model of ``ref`` and the project's class names (casefolded)."""

    def opened() -> tuple[Any, Any]:
        # POST / (the key check), then GET /{workspace}/{project} for the project
        # and again for its versions.
        project = client.sdk().project(ref.dataset)
        return project, project.version(ref.version)

    try:
        project, version = client.call(opened, what=f"open {ref}")
    except RoboflowError as error:  # its message is safe, and so is its context
        raise ModelLoadError(str(error)) from None
    if project.type != OBJECT_DETECTION:
        raise ModelLoadError(
            f"{ref}: project type {project.type!r}; only {OBJECT_DETECTION} models "
            "can label boxes"
        )
    # The server's own id for the version must be the one asked for (and the dataset
    # checked against it), whatever the API resolved the request to.
    served = "/".join(str(version.id).split("/")[:2])
    if served.casefold() != ref.dataset.casefold():
        raise ModelLoadError(f"{ref}: Roboflow answered with version {version.id}")
    sdk_model = getattr(version, "_model", None)  # version.model: deprecated alias
    if sdk_model is None:
        raise ModelLoadError(
            f"{ref}: this version has no trained model; train it in Roboflow first"
        )
    classes = {str(name).casefold() for name in (project.classes or {})}
    return sdk_model, classes


def _roboflow_path(text: str, *, what: str) -> list[str]:
    if not text.startswith(SCHEME):
        raise ModelLoadError(f"{what} {text!r}: expected {SCHEME}...")
    parts = text[len(SCHEME) :].strip("/").split("/")
    if any(not part for part in parts):
        raise ModelLoadError(f"{what} {text!r}: empty part in the path")
    return parts
