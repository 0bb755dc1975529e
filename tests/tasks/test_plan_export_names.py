"""``export_names.parquet`` from a streamed export's plan (``write_plan_export_names``,
Arrow strings, issue 18 item 3) is the very file ``write_export_names`` writes from
the whole tables: same rows, same bytes, whichever export writes it last."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.export_images import images_to_export, plan_export, write_plan_export_names
from tasks.export_names import write_export_names
from tasks.labels import read_images, read_labels
from tasks.splits import Splits
from tests.tasks.export_folders import CLASS_NAMES, write_output_folder


@pytest.mark.parametrize(
    "splits", [Splits(), Splits(train=0.5, val=0.5)], ids=["train", "train-val"]
)
def test_plan_writes_the_bytes_the_whole_tables_write(
    tmp_path: Path, splits: Splits
) -> None:
    layout = write_output_folder(tmp_path)
    images = images_to_export(
        read_images(layout), read_labels(layout), class_names=CLASS_NAMES, flatten=True
    )
    whole = write_export_names(layout, images, splits).read_bytes()
    layout.export_names.unlink()

    path = write_plan_export_names(layout, plan_export(layout, flatten=True), splits)

    assert path == layout.export_names
    assert len(images) >= 2  # readable images, each a row of both files
    assert path.read_bytes() == whole
