"""The model being trained, its optimizer and schedule, one epoch at a time, with a
checkpoint after each so a killed run resumes where it stopped.

A session lives in a per-process cache (like the labeling models): the flow's epoch
tasks find it there; a fresh process (a rerun after a crash or ``kill -9``) rebuilds
it from ``DIR/checkpoints/last.pt``: weights, optimizer, scheduler, gradient scaler,
epoch counter, metrics so far and every random generator's state. Each epoch shuffles
with a generator seeded by (seed, epoch), so a resumed epoch sees the order it would
have seen.

Precision: weights stay float32; ``--dtype`` bfloat16/float16 (``auto``: bfloat16 on a
GPU that has it, else float32) runs forward and loss under autocast, float16 with a
gradient scaler.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model_loaders.device import resolve_device
from tasks.training.data import Example, TrainingData
from tasks.training.recipes import load_processor, recipe_for
from tasks.training.settings import TrainSettings
from tasks.training.state import checkpoint_path, training_state, write_state


@dataclass
class TrainingSession:
    """Everything an epoch needs; ``history`` holds one metrics row per epoch done."""

    settings: TrainSettings
    data: TrainingData
    model: torch.nn.Module
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    training_id: str
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    baseline: dict | None = None  # val metrics of the base, before any training

    @property
    def recipe(self):
        return recipe_for(self.data.task)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def measure(self) -> dict[str, float | None]:
        """The val metrics of the model as it is now."""
        self.model.eval()
        return self.recipe.measure(
            self.model,
            self.processor,
            self.data.val,
            self.data.class_names,
            self.data.load_image,
            self.device,
            self.autocast,
        )

    def train_epoch(self, epoch: int, on_batch: Callable[[int], None]) -> float:
        """Train one epoch over the train split; the mean loss."""
        loader = self._loader(epoch)
        self.model.train()
        total, batches = 0.0, 0
        for batch in loader:
            with self.autocast():
                loss = self.recipe.forward_loss(self.model, batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.recipe.max_grad_norm
            )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += float(loss.detach())
            batches += 1
            on_batch(_batch_size(batch))
        return total / max(batches, 1)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(self.settings.seed * 100_003 + epoch)
        return torch.utils.data.DataLoader(
            _Images(self.data),
            batch_size=self.settings.batch_size,
            sampler=torch.utils.data.RandomSampler(
                self.data.train, generator=generator
            ),
            collate_fn=functools.partial(_collate, self.recipe.collate, self.processor),
            num_workers=self.settings.workers,
        )

    def save_checkpoint(self) -> Path:
        """Replace ``last.pt`` with the state after ``epochs_done`` epochs (written
        beside it and renamed: a kill mid-write leaves the previous one whole)."""
        path = checkpoint_path(self.settings.out_model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(
            {
                "epoch": self.epochs_done,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "history": self.history,
                "baseline": self.baseline,
                "training_id": self.training_id,
                "rng": _rng_state(),
            },
            tmp,
        )
        os.replace(tmp, path)
        return path

    def _resume(self) -> None:
        path = checkpoint_path(self.settings.out_model)
        if not path.is_file():
            return
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epochs_done = int(state["epoch"])
        self.history = list(state["history"])
        self.baseline = state["baseline"]
        _set_rng_state(state["rng"])


class _Images(torch.utils.data.Dataset):
    """The train split, each image read from disk when its batch is made."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.train)

    def __getitem__(self, index: int):
        example = self.data.train[index]
        return self.data.load_image(example), example


def _collate(collate, processor, items: list[tuple[object, Example]]):
    images, examples = zip(*items, strict=True)
    return collate(processor, images, examples)


def _batch_size(batch) -> int:
    return int(batch["pixel_values"].shape[0])


def build_session(data: TrainingData, settings: TrainSettings) -> TrainingSession:
    """A session for ``settings`` on ``data``: the base with the ontology's class head,
    or the last checkpoint of the same training.

    Raises:
        TrainingStateError: See ``state.training_state``.
    """
    from transformers import get_cosine_schedule_with_warmup

    fingerprint = settings.fingerprint(data.task, data.class_names)
    state = training_state(settings.out_model, fingerprint)
    recipe = recipe_for(data.task)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)  # the new class head starts the same every time
    model = recipe.load_model(settings.base, data.class_names).float().to(device)
    processor = load_processor(settings.base, settings.image_size)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
    )
    steps = settings.epochs * math.ceil(len(data.train) / settings.batch_size)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=min(200, steps // 20), num_training_steps=steps
    )
    amp_dtype = _amp_dtype(settings.dtype, device)
    session = TrainingSession(
        settings=settings,
        data=data,
        model=model,
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        device=device,
        amp_dtype=amp_dtype,
        training_id=state.training_id,
    )
    if state.status == "resume":
        session._resume()
    elif state.status == "new":
        write_state(settings.out_model, state.training_id, fingerprint)
    else:
        session.epochs_done = settings.epochs
    return session


def _amp_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
        return None
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def _rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            str(kind),
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached,
        ],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached)
    )
    random.setstate(state["python"])


_sessions: dict[TrainSettings, TrainingSession] = {}
_lock = threading.Lock()


def cached_session(
    settings: TrainSettings, make_data: Callable[[], TrainingData]
) -> TrainingSession:
    """This process's session for ``settings`` (built on first use)."""
    with _lock:
        if settings not in _sessions:
            _sessions[settings] = build_session(make_data(), settings)
        return _sessions[settings]


def drop_session(settings: TrainSettings) -> None:
    """Forget the session (the training is finished or abandoned): frees its memory."""
    with _lock:
        _sessions.pop(settings, None)
