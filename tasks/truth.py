"""Ground truth for ``autolabel evaluate``: human labels read from a COCO JSON or a YOLO
folder, and matched to the images and classes of an output folder.

Reading knows nothing of output folders: ``read_truth`` gives every truth image (its
path as the truth names it, its size, and the SHA-256 of its file when the file lies
next to the truth) and one row per truth box in absolute pixels of that image.
``match_truth`` then pairs truth images with labeled ones (content hash first, then
relative path, then file name) and truth classes with ours (by name, or ``--map``).
Whatever pairs with nothing is listed in the match, never dropped without a word.

The formats themselves are read in ``tasks.truth_coco`` and ``tasks.truth_yolo``
(into ``tasks.truth_model``'s ``GroundTruth``); this module only picks the reader, so
callers import the public names from here whatever the format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from tasks.truth_classes import is_class_truth, read_class_truth
from tasks.truth_coco import read_coco_truth
from tasks.truth_model import GroundTruth, TruthError, TruthImage
from tasks.truth_yolo import read_yolo_truth

SPLIT_FOLDERS = {"train", "valid", "val", "test"}


class MapError(ValueError):
    """A ``--map`` option that cannot be used (an invalid option: exit 2)."""


def read_truth(path: str | Path) -> GroundTruth:
    """Human labels from a COCO JSON file, a folder holding COCO JSON files
    (Roboflow's ``<split>/_annotations.coco.json``), a YOLO folder (``data.yaml``) or
    a Roboflow version (``roboflow://WORKSPACE/PROJECT/VERSION``, its COCO export);
    or classification truth (``kind == "classes"``) from class folders, Roboflow's
    multi-label ``_classes.csv`` or a CSV file (``tasks.truth_classes``).

    Raises:
        TruthError: One line naming the file and why it cannot be read.
    """
    text = str(path)
    if text.startswith("roboflow://"):
        from tasks.truth_roboflow import read_roboflow_truth

        return read_roboflow_truth(text)
    root = Path(path)
    if root.is_file():
        if root.suffix.lower() in (".yaml", ".yml"):
            return read_yolo_truth(root)
        if root.suffix.lower() == ".csv":
            return read_class_truth(root)
        return read_coco_truth([root], source=root)
    if root.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (root / name).is_file():
                return read_yolo_truth(root / name)
        coco_files = sorted(root.glob("*.json")) or sorted(root.glob("*/*.json"))
        if coco_files:
            return read_coco_truth(coco_files, source=root)
        if is_class_truth(root):
            return read_class_truth(root)
        raise TruthError(
            f"{root}: no data.yaml (YOLO), COCO JSON file, class folders nor "
            "_classes.csv in this folder"
        )
    raise TruthError(f"{root}: no such file or folder")


def parse_map_options(options: Iterable[str]) -> dict[str, str]:
    """``--map their_name=our_class`` options as a dict.

    Raises:
        MapError: For an option without ``=`` or with an empty side.
    """
    mapping: dict[str, str] = {}
    for option in options:
        theirs, has_equals, ours = option.partition("=")
        theirs, ours = theirs.strip(), ours.strip()
        if not has_equals or not theirs or not ours:
            raise MapError(f"--map {option!r}: write THEIR_CLASS=OUR_CLASS")
        mapping[theirs] = ours
    return mapping


@dataclass
class TruthMatch:
    """Truth paired with an output folder: the truth boxes of matched images with our
    image ids and class names, and everything that matched nothing."""

    boxes: pd.DataFrame  # TRUTH_COLUMNS + image_id, truth class_name -> ours
    image_ids: list[str]  # labeled images that have truth, in truth order
    matched_by: dict[str, int]  # hash / path / name -> images
    classes: list[str]  # our classes the truth labels (those evaluated)
    class_map: dict[str, str]  # truth class -> our class, for every known one
    unmatched_images: list[str]  # truth images not among the labeled ones
    unlabeled_images: list[str]  # labeled images (relative paths) without truth
    duplicate_images: list[str]  # truth images of an image already matched
    unknown_classes: dict[str, int]  # truth class -> its boxes, not evaluated
    classes_without_truth: list[str]  # our classes the truth does not know
    resized_images: list[str] = field(default_factory=list)  # boxes rescaled
    image_of: dict[int, str] = field(default_factory=dict)  # truth index -> image id


def match_truth(
    truth: GroundTruth,
    manifest: pd.DataFrame,
    *,
    our_classes: Sequence[str],
    class_map: dict[str, str] | None = None,
) -> TruthMatch:
    """Pair ``truth`` with the labeled images of ``manifest`` and with ``our_classes``.

    Images: by content hash (the labeled image id), then by relative path, then by
    file name when only one labeled image has it (a Roboflow export's
    ``cat_jpg.rf.<hash>.jpg`` by its original name ``cat.jpg``). Classes:
    ``class_map`` first, else the same name. Truth boxes of an image whose size
    differs from the labeled one are scaled to it (their masks dropped) and the image
    is listed.

    Raises:
        MapError: If ``class_map`` names a class the truth or the output lacks.
    """
    class_map = dict(class_map or {})
    _check_map(class_map, truth.class_names, our_classes)
    labeled = manifest[manifest["skipped_reason"].isna() & (manifest["image_id"] != "")]
    labeled = labeled.drop_duplicates("image_id")
    by_id = {row.image_id: row for row in labeled.itertuples()}
    by_path = _unique_index(labeled, lambda row: _posix(row.relative_path))
    by_name = _unique_index(
        labeled, lambda row: PurePosixPath(_posix(row.relative_path)).name
    )
    image_of: dict[int, str] = {}
    matched_by = {"hash": 0, "path": 0, "name": 0}
    unmatched: list[str] = []
    duplicates: list[str] = []
    for index, image in enumerate(truth.images):
        found, how = _find_image(image, by_id, by_path, by_name)
        if found is None:
            unmatched.append(image.path)
        elif found in image_of.values():
            duplicates.append(image.path)
        else:
            image_of[index] = found
            matched_by[how] += 1
    boxes = truth.boxes[truth.boxes["truth_image"].isin(image_of)].copy()
    boxes["image_id"] = boxes["truth_image"].map(image_of)
    resized = _fit_sizes(boxes, truth.images, image_of, by_id)
    known = {name: class_map.get(name, name) for name in truth.class_names}
    known = {theirs: ours for theirs, ours in known.items() if ours in our_classes}
    unknown_mask = ~boxes["class_name"].isin(known)
    unknown = boxes.loc[unknown_mask, "class_name"].value_counts()
    unknown_classes = {
        name: int(unknown.get(name, 0))
        for name in truth.class_names
        if name not in known
    }
    boxes = boxes[~unknown_mask].copy()
    boxes["class_name"] = boxes["class_name"].map(known)
    classes = [name for name in our_classes if name in set(known.values())]
    matched_ids = set(image_of.values())
    return TruthMatch(
        boxes=boxes.reset_index(drop=True),
        image_ids=list(image_of.values()),
        matched_by=matched_by,
        classes=classes,
        class_map=known,
        unmatched_images=unmatched,
        unlabeled_images=sorted(
            _posix(row.relative_path)
            for row in labeled.itertuples()
            if row.image_id not in matched_ids
        ),
        duplicate_images=duplicates,
        unknown_classes=unknown_classes,
        classes_without_truth=[n for n in our_classes if n not in classes],
        resized_images=resized,
        image_of=image_of,
    )


def _check_map(
    class_map: dict[str, str], theirs: Sequence[str], ours: Sequence[str]
) -> None:
    bad_theirs = sorted(set(class_map) - set(theirs))
    if bad_theirs:
        raise MapError(
            f"--map names {bad_theirs}, not classes of the truth; its classes are "
            f"{list(theirs)}"
        )
    bad_ours = sorted(set(class_map.values()) - set(ours))
    if bad_ours:
        raise MapError(
            f"--map maps to {bad_ours}, not classes of the labels; they are "
            f"{list(ours)}"
        )


def _find_image(image: TruthImage, by_id, by_path, by_name) -> tuple[str | None, str]:
    if image.content_id is not None and image.content_id in by_id:
        return image.content_id, "hash"
    path = _posix(image.path)
    candidates = [path]
    parts = PurePosixPath(path).parts
    if len(parts) > 1 and parts[0] in SPLIT_FOLDERS:
        # A split folder of the truth's export (train/a.jpg) is not in the labeled path.
        candidates.append("/".join(parts[1:]))
    for candidate in candidates:
        if candidate in by_path and by_path[candidate] is not None:
            return by_path[candidate], "path"
    name = PurePosixPath(path).name
    for candidate in (name, roboflow_original_name(name)):
        if candidate and by_name.get(candidate) is not None:
            return by_name[candidate], "name"
    return None, ""


_ROBOFLOW_NAME = re.compile(r"^(?P<stem>.+)_(?P<ext>[A-Za-z0-9]+)\.rf\.[0-9a-f]+\.\w+$")


def roboflow_original_name(name: str) -> str | None:
    """The file name a Roboflow export's image had when uploaded (``cat_jpg.rf.<hash>
    .jpg`` -> ``cat.jpg``); None for a name Roboflow did not make."""
    found = _ROBOFLOW_NAME.match(name)
    return f"{found['stem']}.{found['ext']}" if found else None


def _unique_index(labeled: pd.DataFrame, key) -> dict[str, str | None]:
    """key -> image id, or None where two labeled images share the key."""
    index: dict[str, str | None] = {}
    for row in labeled.itertuples():
        if not isinstance(row.relative_path, str):
            continue
        value = key(row)
        index[value] = None if value in index else row.image_id
    return index


def _fit_sizes(boxes: pd.DataFrame, images, image_of, by_id) -> list[str]:
    """Scale truth boxes of images stored at another size than the labeled one."""
    resized = []
    for index, image_id in image_of.items():
        image = images[index]
        row = by_id[image_id]
        width, height = int(row.width), int(row.height)
        if (image.width, image.height) == (width, height) or not image.width:
            continue
        resized.append(image.path)
        rows = boxes["truth_image"] == index
        sx, sy = width / image.width, height / image.height
        boxes.loc[rows, ["x_min", "x_max"]] *= sx
        boxes.loc[rows, ["y_min", "y_max"]] *= sy
        boxes.loc[rows, "mask"] = None
    return resized


def _posix(path: str) -> str:
    text = str(path).replace("\\", "/") if path else ""
    while text.startswith("./"):
        text = text[2:]
    return text.lstrip("/")
