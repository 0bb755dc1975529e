"""What a training run leaves in its ``--out-model`` folder while it runs, and how a
rerun knows whether to start, resume or stop at once.

``DIR/checkpoints/state.json`` is written before the first epoch: the training's id
(part of every credit charge key, so a resumed epoch is never charged twice) and the
fingerprint of the settings that shape the weights. ``DIR/checkpoints/last.pt`` is
replaced after every epoch. A finished run writes the model folder and
``DIR/training.json`` and removes ``checkpoints/``. A rerun of the same command thus
starts (nothing there), resumes (state with the same fingerprint) or finds the model
done (training.json with the same fingerprint); any other folder is refused.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.export_files import write_text_atomically
from tasks.out_lock import LOCK_NAME

TRAINING_JSON = "training.json"


class TrainingStateError(ValueError):
    """An ``--out-model`` folder this training cannot write; one line."""


@dataclass(frozen=True)
class TrainingState:
    """Where a training stands before it runs."""

    status: Literal["new", "resume", "finished"]
    training_id: str


def checkpoints_dir(out_model: str | Path) -> Path:
    return Path(out_model) / "checkpoints"


def checkpoint_path(out_model: str | Path) -> Path:
    return checkpoints_dir(out_model) / "last.pt"


def state_path(out_model: str | Path) -> Path:
    return checkpoints_dir(out_model) / "state.json"


def training_json_path(out_model: str | Path) -> Path:
    return Path(out_model) / TRAINING_JSON


def training_state(out_model: str | Path, fingerprint: dict) -> TrainingState:
    """Start, resume or done (see the module docstring); checks only, writes nothing.

    Raises:
        TrainingStateError: The folder holds something else (another training, other
            files, or it is a file).
    """
    root = Path(out_model)
    if root.exists() and not root.is_dir():
        raise TrainingStateError(f"--out-model {out_model}: a file, not a folder")
    finished = training_json_path(root)
    if finished.is_file():
        record = _read_json(finished)
        if record.get("fingerprint") != fingerprint:
            raise TrainingStateError(
                f"{finished}: this folder holds a model trained with other settings "
                f"({_difference(record.get('fingerprint'), fingerprint)}); choose "
                "another --out-model"
            )
        return TrainingState("finished", str(record.get("training_id", "")))
    state = state_path(root)
    if state.is_file():
        record = _read_json(state)
        if record.get("fingerprint") != fingerprint:
            raise TrainingStateError(
                f"{state}: an unfinished training with other settings "
                f"({_difference(record.get('fingerprint'), fingerprint)}); rerun it "
                "with those, or choose another --out-model"
            )
        return TrainingState("resume", str(record["training_id"]))
    others = (
        [p.name for p in root.iterdir() if p.name != LOCK_NAME] if root.is_dir() else []
    )
    if others:
        raise TrainingStateError(
            f"--out-model {out_model}: the folder is not empty ({sorted(others)[0]}, "
            "...) and holds no training of ours; choose a new or empty folder"
        )
    return TrainingState("new", uuid.uuid4().hex[:12])


def write_state(out_model: str | Path, training_id: str, fingerprint: dict) -> None:
    """Record the training's id and fingerprint before its first epoch."""
    path = state_path(out_model)
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        path,
        json.dumps({"training_id": training_id, "fingerprint": fingerprint}, indent=1),
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainingStateError(f"{path}: cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise TrainingStateError(f"{path}: not a JSON object")
    return data


def _difference(theirs: object, ours: dict) -> str:
    if not isinstance(theirs, dict):
        return "no settings recorded"
    keys = [k for k in ours if theirs.get(k) != ours[k]]
    return ", ".join(f"{k} {theirs.get(k)!r} there, {ours[k]!r} now" for k in keys[:2])
