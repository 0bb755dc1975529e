"""The finished model: a normal Hugging Face folder (config with the ontology's class
names as ``id2label``, safetensors weights, the image processor at the trained size)
plus ``training.json``, which ``autolabel label --model DIR`` loads as the trained
backend."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.export_files import write_text_atomically
from tasks.training.state import checkpoints_dir, training_json_path

# Where the review page puts the models it trains: ``OUT/models/<name>``.
TRAINED_MODELS_FOLDER = "models"

if TYPE_CHECKING:  # torch and transformers load only when a model is written
    from tasks.training.session import TrainingSession


def training_record(session: TrainingSession) -> dict:
    """What ``training.json`` says: the data, split, base, settings and each epoch's
    metrics (once per epoch, resumed runs included)."""
    settings, data = session.settings, session.data
    return {
        "training_id": session.training_id,
        "task": data.task,
        "base": settings.base,
        "data": str(Path(data.out).resolve()),
        "classes_from": data.classes_from,
        "class_names": data.class_names,
        "split": settings.split or "as exported (10% val when none)",
        "train_images": len(data.train),
        "val_images": len(data.val),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "image_size": settings.image_size,
        "learning_rate": settings.learning_rate,
        "baseline": session.baseline,
        "metrics": session.history,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": settings.fingerprint(data.task, data.class_names),
    }


def write_model_folder(session: TrainingSession) -> Path:
    """Save the model, processor and training.json to ``--out-model``; then drop the
    checkpoints (training.json, written last, marks the folder finished)."""
    root = Path(session.settings.out_model)
    session.model.eval().save_pretrained(root)
    session.processor.save_pretrained(root)
    write_text_atomically(
        training_json_path(root), json.dumps(training_record(session), indent=1) + "\n"
    )
    shutil.rmtree(checkpoints_dir(root), ignore_errors=True)
    return root


def read_training_record(out_model: str | Path) -> dict:
    """The ``training.json`` of a finished model folder."""
    return json.loads(training_json_path(out_model).read_text(encoding="utf-8"))


# The val metrics a model list shows of each model's last epoch.
SHOWN_METRICS = ("epoch", "map50", "map", "accuracy")


def trained_model_summary(folder: str | Path) -> dict | None:
    """What a model selector shows of a finished model folder (name, path, task, class
    names, last val metrics); None when it holds no readable ``training.json``."""
    root = Path(folder)
    try:
        record = read_training_record(root)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    history = record.get("metrics") or []
    last = history[-1] if history and isinstance(history[-1], dict) else {}
    return {
        "name": root.name,
        "path": str(root.resolve()),
        "task": record.get("task"),
        "base": record.get("base"),
        "class_names": [str(name) for name in record.get("class_names") or []],
        "epochs": record.get("epochs"),
        "metrics": {key: last[key] for key in SHOWN_METRICS if key in last},
        "finished_at": record.get("finished_at"),
    }


def trained_models(parent: str | Path) -> list[dict]:
    """The finished model folders directly under ``parent`` (each with a
    ``training.json``), newest first; none when ``parent`` does not exist."""
    root = Path(parent)
    if not root.is_dir():
        return []
    found = (trained_model_summary(folder) for folder in root.iterdir())
    summaries = [summary for summary in found if summary is not None]
    return sorted(
        summaries, key=lambda s: (str(s["finished_at"] or ""), s["name"]), reverse=True
    )
