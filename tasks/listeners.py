"""Process-local listeners: how a flow running in this process tells whoever watches
(the CLI's progress bar, its approval instructions, the review page's job) what it does.

A callback cannot be a task parameter (it would be hashed and serialised), so watchers
register here and tasks report to every one registered. On a remote worker nobody
listens and reporting costs nothing.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

L = TypeVar("L")


class Listeners(Generic[L]):
    """A thread-safe list of listeners; reports go to a snapshot, so a listener may
    remove itself while being told."""

    def __init__(self) -> None:
        self._listeners: list[L] = []
        self._lock = threading.Lock()

    def add(self, listener: L) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: L) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def current(self) -> list[L]:
        with self._lock:
            return list(self._listeners)
