"""Classification truth: which classes each image has, from a class-folder tree or a
CSV file.

Formats (a folder is told apart from COCO/YOLO truth in ``tasks.truth``):
- Class folders, ImageNet style: ``ROOT/<class>/<image>``, or with split folders
  ``ROOT/<split>/<class>/<image>`` (``train``, ``valid``, ``val``, ``test``): Roboflow's
  single-label classification export, torchvision's ``ImageFolder``, and autolabel's
  own ``classification/folders`` export. One class per image.
- Roboflow's multi-label export: ``ROOT[/<split>]/_classes.csv`` (``filename,<class>,
  ...`` and a row of 0/1 per image) beside the images.
- A CSV file: Roboflow's ``_classes.csv`` as above; autolabel's ``labels.csv`` (header
  ``image,classes,...``, classes joined by ``;``); or rows ``image,class[,class...]``
  with an optional header row whose first cell is ``image``. Image paths are relative
  to the CSV's folder (an image found there is hashed, so it matches by content).

Each image's classes become rows of a ``GroundTruth`` of kind ``classes`` (no boxes),
so ``tasks.truth.match_truth`` pairs images and classes (``--map`` included) as for
boxes.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from tasks.truth_model import GroundTruth, TruthError, TruthImage, error_reason
from tasks.truth_yolo import IMAGE_SUFFIXES

SPLITS = {"train", "valid", "val", "test"}
ROBOFLOW_MULTI_LABEL_CSV = "_classes.csv"
NOT_CLASSES = {"images", "labels"}


def is_class_truth(root: Path) -> bool:
    """Whether a folder holds classification truth (class folders or _classes.csv)."""
    return bool(_multi_label_files(root)) or bool(_class_folder_images(root))


def read_class_truth(path: Path) -> GroundTruth:
    """Classification truth from a folder or a CSV file (see the module docstring).

    Raises:
        TruthError: One line naming the file and why it cannot be read.
    """
    if path.is_file():
        return _from_csv(path)
    multi = _multi_label_files(path)
    if multi:
        return _merged([_from_csv(file, root=path) for file in multi], path)
    images = _class_folder_images(path)
    if not images:
        raise TruthError(f"{path}: no class folders (<class>/<image>) in this folder")
    names = sorted({_class_of(path, image) for image in images})
    entries = [
        (image.relative_to(path).as_posix(), image, [_class_of(path, image)])
        for image in images
    ]
    return _truth(path, entries, names, multi_label=False)


def _class_folder_images(root: Path) -> list[Path]:
    """Images at ``<class>/<image>`` or ``<split>/<class>/<image>`` under ``root``."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        parts = path.relative_to(root).parts
        if len(parts) < 2 or parts[-2] in NOT_CLASSES:
            continue  # loose images, or a YOLO-style split folder (train/images/)
        if len(parts) == 2 or (len(parts) == 3 and parts[0] in SPLITS):
            found.append(path)
    return found


def _class_of(root: Path, image: Path) -> str:
    return image.relative_to(root).parts[-2]


def _multi_label_files(root: Path) -> list[Path]:
    return sorted(root.glob(ROBOFLOW_MULTI_LABEL_CSV)) or sorted(
        root.glob(f"*/{ROBOFLOW_MULTI_LABEL_CSV}")
    )


def _from_csv(file: Path, *, root: Path | None = None) -> GroundTruth:
    try:
        with file.open(encoding="utf-8", newline="") as handle:
            rows = [
                [cell.strip() for cell in row]
                for row in csv.reader(handle)
                if any(cell.strip() for cell in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TruthError(f"{file}: cannot be read: {error_reason(error)}") from None
    if not rows:
        raise TruthError(f"{file}: an empty CSV file")
    header = [cell.lower() for cell in rows[0]]
    multi = header[0] == "filename"
    if multi:
        entries, names = _zero_one_rows(file, rows), rows[0][1:]
    elif header[:2] == ["image", "classes"]:
        entries = [(row[0], [c for c in row[1].split(";") if c]) for row in rows[1:]]
        names = [c for c in rows[0][2:] if c.lower() != "split"]
    else:
        body = rows[1:] if header[0] == "image" else rows
        entries = [(row[0], [c for c in row[1:] if c]) for row in body]
        names = []
    prefix = ""
    if root is not None and file.parent != root:
        prefix = file.parent.relative_to(root).as_posix() + "/"
    located = [
        (prefix + name.replace("\\", "/"), file.parent / name, classes)
        for name, classes in entries
    ]
    for _, classes in entries:
        names += [c for c in classes if c not in names]
    multi = multi or any(len(classes) > 1 for _, classes in entries)
    return _truth(file, located, names, multi_label=multi)


def _zero_one_rows(file: Path, rows: list[list[str]]) -> list[tuple[str, list[str]]]:
    names = rows[0][1:]
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(names) + 1 or any(v not in ("0", "1") for v in row[1:]):
            raise TruthError(
                f"{file}:{number}: expected a file name and {len(names)} values 0 or 1"
            )
        entries.append(
            (row[0], [n for n, v in zip(names, row[1:], strict=True) if v == "1"])
        )
    return entries


def _truth(
    source: Path,
    entries: list[tuple[str, Path, list[str]]],
    names: list[str],
    *,
    multi_label: bool,
) -> GroundTruth:
    images, rows = [], []
    for index, (name, file, classes) in enumerate(entries):
        if not name or PurePosixPath(name).is_absolute():
            raise TruthError(f"{source}: {name!r} is not a relative image path")
        images.append(TruthImage.at(name, 0, 0, file=file if file.is_file() else None))
        rows += [_row(index, name_) for name_ in dict.fromkeys(classes)]
    return GroundTruth.from_rows(
        source, images, rows, names, kind="classes", multi_label=multi_label
    )


def _row(index: int, class_name: str) -> dict:
    nan = float("nan")
    return {
        "truth_image": index,
        "class_name": class_name,
        "x_min": nan,
        "y_min": nan,
        "x_max": nan,
        "y_max": nan,
        "mask": None,
    }


def _merged(parts: list[GroundTruth], root: Path) -> GroundTruth:
    """Several split files as one truth (classes joined by name, in order)."""
    images, rows, names = [], [], []
    for part in parts:
        offset = len(images)
        images += part.images
        for row in part.boxes.to_dict("records"):
            rows.append({**row, "truth_image": row["truth_image"] + offset})
        names += [n for n in part.class_names if n not in names]
    return GroundTruth.from_rows(
        root, images, rows, names, kind="classes", multi_label=True
    )
