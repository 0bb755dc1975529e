"""Every export as the labeling flow calls it (a Prefect task) and as a rerun writes it:
the task writes its files each time it is called, never a cached result of an earlier
call, and writing again gives the same files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import Task, flow

from tasks.export_classification import (
    export_class_folders_task,
    export_class_table_task,
    export_roboflow_classification_task,
)
from tasks.export_coco import export_coco_task, write_coco
from tasks.export_voc import export_voc_task, write_voc
from tasks.export_yolo import export_yolo_task, write_yolo
from tasks.labels import OutputLayout
from tests.tasks.export_folders import (
    CLASS_NAMES,
    CLASSIFICATION_NAMES,
    SINGLE_LABEL,
    write_classification_folder,
    write_output_folder,
)


@dataclass(frozen=True)
class ExportTask:
    task: Task
    write_folder: Callable[[Path], OutputLayout]  # the labeled folder it exports
    class_names: list[str]
    output: Callable[[OutputLayout], Path]  # what the task returns
    looks_right: Callable[[Path], bool]  # a look inside what it wrote
    extra: tuple = ()  # arguments after (layout, class_names)


def _classification_folder(root: Path) -> OutputLayout:
    return write_classification_folder(root, SINGLE_LABEL)


def _coco_images(split_dir: Path) -> list[dict]:
    return json.loads((split_dir / "_annotations.coco.json").read_text())["images"]


EXPORT_TASKS = {
    "export-coco": ExportTask(
        export_coco_task,
        write_output_folder,
        CLASS_NAMES,
        lambda layout: layout.coco_dir,
        lambda path: len(_coco_images(path / "train")) == 4,
    ),
    "export-voc": ExportTask(
        export_voc_task,
        write_output_folder,
        CLASS_NAMES,
        lambda layout: layout.voc_dir,
        lambda path: "<object>" not in (path / "train" / "empty.xml").read_text(),
    ),
    "export-yolo": ExportTask(
        export_yolo_task,
        write_output_folder,
        CLASS_NAMES,
        lambda layout: layout.yolo_dir / "data.yaml",
        # empty.png has no boxes: an empty label file, in its split's folder.
        lambda path: (
            [p.read_text() for p in path.parent.glob("*/labels/empty.txt")] == [""]
        ),
    ),
    "export-class-table": ExportTask(
        export_class_table_task,
        _classification_folder,
        CLASSIFICATION_NAMES,
        lambda layout: layout.class_table_csv,
        lambda path: path.read_text().splitlines()[1].startswith("a/x.jpg,cat,"),
    ),
    "export-class-folders": ExportTask(
        export_class_folders_task,
        _classification_folder,
        CLASSIFICATION_NAMES,
        lambda layout: layout.class_folders_dir,
        lambda path: (path / "train" / "cat" / "a__x.jpg").is_file(),
    ),
    "export-roboflow-classification": ExportTask(
        export_roboflow_classification_task,
        _classification_folder,
        CLASSIFICATION_NAMES,
        lambda layout: layout.roboflow_classification_dir,
        lambda path: (path / "train" / "dog" / "b__x.jpg").is_file(),
        extra=(False,),  # multi_label
    ),
}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("name", EXPORT_TASKS)
def test_the_export_task_writes_again_when_called_again_with_the_same_inputs(
    name: str, tmp_path: Path
) -> None:
    """Within one flow run, the same task with the same inputs after its output was
    deleted: written again (a cached task would return the old path and write
    nothing), with the same content."""
    export = EXPORT_TASKS[name]
    layout = export.write_folder(tmp_path)
    arguments = (layout, export.class_names, *export.extra)
    written: list[bool] = []

    @flow
    def export_twice() -> tuple[Path, Path]:
        first = export.task(*arguments)
        written.append(first.exists())
        _remove(first)
        second = export.task(*arguments)
        written.append(second.exists())
        return first, second

    first, second = export_twice()

    assert first == second == export.output(layout)
    assert written == [True, True]
    assert export.looks_right(second)


WRITERS: dict[str, tuple[Callable[..., Path], Callable[[OutputLayout], Path]]] = {
    "coco": (write_coco, lambda layout: layout.coco_dir),
    "voc": (write_voc, lambda layout: layout.voc_dir),
    "yolo": (write_yolo, lambda layout: layout.yolo_dir),
}


@pytest.mark.parametrize("name", WRITERS)
def test_rerun_writes_the_same_files(name: str, tmp_path: Path) -> None:
    write, folder_of = WRITERS[name]
    layout = write_output_folder(tmp_path)
    write(layout, CLASS_NAMES)
    folder = folder_of(layout)
    first = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    write(layout, CLASS_NAMES)

    second = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert second == first and len(first) > 1
