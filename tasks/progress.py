"""Process-local progress reporting from tasks to whoever is watching (the CLI's
progress bar, the review page's job); see ``tasks.listeners``. The Prefect UI follows
the run through its task runs and artifacts instead.
"""

from __future__ import annotations

from typing import Protocol

from tasks.listeners import Listeners


class ProgressListener(Protocol):
    def expect(self, total: int) -> None:
        """The number of images the run will go through."""

    def advance(self, done: int) -> None:
        """``done`` more images are finished."""


_listeners: Listeners[ProgressListener] = Listeners()


def add_listener(listener: ProgressListener) -> None:
    _listeners.add(listener)


def remove_listener(listener: ProgressListener) -> None:
    _listeners.remove(listener)


def expect(total: int) -> None:
    for listener in _listeners.current():
        listener.expect(total)


def advance(done: int) -> None:
    for listener in _listeners.current():
        listener.advance(done)
