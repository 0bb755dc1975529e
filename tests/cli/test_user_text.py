"""File, class and folder names are data: a name that looks like rich markup or holds
terminal control characters is printed as it is, and the run ends as it should."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.photos import write_sample_photos

runner = CliRunner()


@pytest.mark.usefixtures("prefect_harness")
def test_markup_and_control_characters_in_names_are_printed_as_text(
    tiny_grounding_dino, tmp_path
):
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    first = sorted(p for p in photos.rglob("*.jpg"))[0]
    (photos / "x[").mkdir()
    shutil.copy(first, photos / "x[" / "b].jpg")  # the path reads x[/b].jpg
    (photos / "broken [bold].jpg").write_bytes(b"not an image")
    (photos / "bell\x07[red]red.jpg").write_bytes(b"not an image either")
    out = tmp_path / "out[/b]"
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(out), "--model", tiny_grounding_dino,
         "--class", "[bold]box[/bold]", "--threshold", "0.0"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output  # done, two files skipped
    text = result.output
    assert "[bold]box[/bold]" in text  # the class, as named
    assert "out[/b]/report.md" in text.replace("\n", "")  # the folder, as named
    assert "broken [bold].jpg" in text  # the skipped file, as named
    assert "bell\\x07[red]red.jpg" in text and "\x07" not in text
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "broken [bold].jpg" in report and "\x07" not in report
    assert "bell\\x07[red]red.jpg" in report
    assert "\\[bold\\]box\\[/bold\\]" in report  # the class cell, escaped
