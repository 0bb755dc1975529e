"""Process-local progress reporting from tasks to whoever is watching (the CLI's
progress bar).

Prefect tasks run in the CLI's process by default; a callback cannot be a task parameter
(it would be hashed and serialised), so the CLI registers a listener here and the tasks
report to it. On a remote worker nobody listens and reporting costs nothing; the Prefect
UI follows the run through its task runs and artifacts instead.
"""

from __future__ import annotations

import threading
from typing import Protocol


class ProgressListener(Protocol):
    def expect(self, total: int) -> None:
        """The number of images the run will go through."""

    def advance(self, done: int) -> None:
        """``done`` more images are finished."""


_listeners: list[ProgressListener] = []
_lock = threading.Lock()


def add_listener(listener: ProgressListener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: ProgressListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def expect(total: int) -> None:
    for listener in _current():
        listener.expect(total)


def advance(done: int) -> None:
    for listener in _current():
        listener.advance(done)


def _current() -> list[ProgressListener]:
    with _lock:
        return list(_listeners)
