"""The per-process model cache: each model is loaded once per worker process.

A module-level dict behind locks rather than ``functools.lru_cache``: under Prefect's
thread-pool task runner, lru_cache lets two threads that miss at the same time both load
the model. Here the first caller loads while the others wait on that model's own lock,
and different models can load in parallel.
"""

from __future__ import annotations

import threading

from model_loaders.allocator import keep_freed_memory
from model_loaders.backends import backend_class
from model_loaders.protocol import LabelingModel, ModelSpec

_models: dict[ModelSpec, LabelingModel] = {}
_locks: dict[ModelSpec, threading.Lock] = {}
_locks_guard = threading.Lock()


def get_model(spec: ModelSpec) -> LabelingModel:
    """The loaded model for ``spec``, loading it on first use in this process."""
    model = _models.get(spec)
    if model is not None:
        return model
    with _locks_guard:
        lock = _locks.setdefault(spec, threading.Lock())
    with lock:
        model = _models.get(spec)
        if model is None:
            from model_loaders.device import runs_on_cpu  # torch: only when loading

            if runs_on_cpu(spec.device):  # see model_loaders.allocator for why
                keep_freed_memory()
            model = backend_class(spec.backend).load(spec)
            _models[spec] = model
        return model


def clear() -> None:
    """Forget every loaded model (tests, or to free GPU memory between runs)."""
    with _locks_guard:
        _models.clear()
        _locks.clear()
