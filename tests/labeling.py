"""Labeling a folder without Prefect: every planned chunk through ``label_chunk``, one
after the other and each decoding the next one's first images, as the labeling flow's
tasks do.

A helper module, not a test module (others' modules may use it too).
"""

from __future__ import annotations

from pathlib import Path

from tasks.decode_ahead import DecodeAhead
from tasks.label import each_with_next, label_chunk, plan_chunks
from tasks.labels import OutputLayout
from tasks.settings import LabelSettings


def label_folder(
    source: Path, out: Path, settings: LabelSettings, run_id: str = "run-1"
) -> OutputLayout:
    """Label every image of ``source`` into ``out``; the output's layout."""
    chunks = plan_chunks(str(source), settings)
    with DecodeAhead(out) as ahead:
        for chunk, next_chunk in each_with_next(chunks):
            label_chunk(
                chunk,
                settings,
                str(out),
                run_id,
                decode_ahead=ahead,
                next_chunk=next_chunk,
            )
    return OutputLayout(out)
