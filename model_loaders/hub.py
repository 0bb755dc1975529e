"""Finding a Hugging Face model before loading it, failing fast when it cannot be had.

transformers retries an unreachable Hub for minutes, file by file, before it gives up. A
model that is neither a local folder nor in the local Hugging Face cache, on a machine
that cannot resolve the Hub's host name, gets one clear line instead, at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from model_loaders.protocol import ModelLoadError, ModelSpec


def check_model_reachable(model: str, *, what: str) -> None:
    """Raise ModelLoadError unless ``model`` is a local folder, cached, or
    downloadable."""
    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {model}: no such model directory")
        return
    if _in_local_cache(model) or _hub_resolves():
        return
    raise ModelLoadError(
        f"cannot load {what} {model!r}: it is not in the local Hugging Face cache "
        "and the Hub cannot be reached (offline?). On a machine with internet run "
        f"`hf download {model} "
        "--local-dir DIR`, copy DIR here and pass --model DIR."
    )


def _in_local_cache(model: str) -> bool:
    from model_loaders.model_family import cached_config

    return cached_config(model) is not None


def _hub_resolves() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host or "huggingface.co", 443)
    except OSError:
        return False
    return True


def load_pretrained(
    spec: ModelSpec, *, what: str, load: Callable[[Any], tuple[Any, Any]]
) -> tuple[Any, Any, Any]:
    """``(processor, model, device)`` of a Hugging Face id or folder, the model on
    the spec's device and dtype, in eval mode.

    ``load(dtype)`` returns the processor and the model; anything it raises
    (transformers raises OSError, ValueError, HTTP errors, config errors...) becomes
    one ModelLoadError line naming ``what`` and the model.
    """
    from model_loaders.device import resolve_device, resolve_dtype

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    check_model_reachable(spec.model, what=what)
    try:
        processor, model = load(dtype)
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"cannot load {what} {spec.model!r}: {type(error).__name__}: "
            f"{detail or 'no details'}"
        ) from error
    return processor, model.to(device).eval(), device


def load_light(spec: ModelSpec, *, what: str, load: Callable[[], Any]) -> Any:
    """What a check before the weights load reads (a tokenizer, a config): ``load()``'s
    result, or one ModelLoadError line naming ``what`` and the model."""
    check_model_reachable(spec.model, what=what)
    try:
        return load()
    except Exception as error:  # as in load_pretrained: one line
        raise ModelLoadError(
            f"cannot load {what} {spec.model!r}: {type(error).__name__}"
        ) from error
