"""Labeling a folder without Prefect: every planned chunk through ``label_chunk``, one
after the other, as the labeling flow's tasks would.

A helper module, not a test module (others' modules may use it too).
"""

from __future__ import annotations

from pathlib import Path

from tasks.label import label_chunk, plan_chunks
from tasks.labels import OutputLayout
from tasks.settings import LabelSettings


def label_folder(
    source: Path, out: Path, settings: LabelSettings, run_id: str = "run-1"
) -> OutputLayout:
    """Label every image of ``source`` into ``out``; the output's layout."""
    for chunk in plan_chunks(str(source), settings):
        label_chunk(chunk, settings, str(out), run_id)
    return OutputLayout(out)
