"""What the ``autolabel`` commands print, and the exit codes they end with.

Exit codes: 0 done; 1 a source, model or server could not be used; 2 invalid options
(ontology, thresholds, approval input); 3 done, but some images were skipped (listed in
report.md); 4 stopped by the credit budget; 5 quality checks failed with --quality fail;
6 the run ended without approval (nothing labeled, nothing charged).

User text (file names, class names, paths) is data: it is escaped, never read as rich
markup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from tasks import progress
from tasks.credits import format_credits
from tasks.markdown import printable
from tasks.report import RunSummary

EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_BUDGET, EXIT_QUALITY = 1, 2, 3, 4, 5
EXIT_NOT_APPROVED = 6

console = Console(stderr=True)


def shown(text: object) -> str:
    """User text (file, class and folder names, messages) for the console: never
    read as rich markup, control characters shown as \\xNN instead of acting on the
    terminal."""
    return escape(printable(text))


def print_error(error: object) -> None:
    """One line, never wrapped, never marked up: users grep and paste these."""
    console.print(f"[red]error:[/red] {shown(error)}", soft_wrap=True)


def debugging() -> bool:
    """``--debug`` or ``AUTOLABEL_DEBUG=1``: show tracebacks behind error lines."""
    return os.environ.get("AUTOLABEL_DEBUG", "") not in ("", "0")


def fail(message: object, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` as the one error line and exit with ``code`` (with
    ``--debug``, the traceback of the exception being handled first)."""
    if debugging() and sys.exc_info()[0] is not None:
        console.print_exception()
    print_error(message)
    raise typer.Exit(code)


def usage(message: object) -> NoReturn:
    """An invalid option: one line, exit 2."""
    fail(message, EXIT_USAGE)


@contextmanager
def exit_on(*errors: type[BaseException], code: int) -> Iterator[None]:
    """Turn the given exceptions into one error line and exit ``code``."""
    try:
        yield
    except errors as error:
        fail(error, code)


def report_run(summary: RunSummary, out: str) -> int:
    """Print what a labeling run did; the exit code that says how it ended."""
    per_class = ", ".join(f"{k} {v}" for k, v in summary.per_class.items())
    console.print(
        f"Labeled {summary.labeled} of {summary.images} images: {summary.labels} "
        f"labels ({shown(per_class)}); "
        f"{format_credits(summary.credits_used or 0.0)} credits. "
        f"Outputs in {shown(out)}/ (report: {shown(out.rstrip('/'))}/report.md)."
    )
    if summary.upload is not None:
        upload = summary.upload
        console.print(
            f"Roboflow: {upload.uploaded} uploaded, {upload.skipped} already there, "
            f"{len(upload.failed)} failed."
        )
    if summary.budget_stop:
        print_error(
            f"stopped before labeling more: {summary.budget_stop}. "
            f"Labels made so far are kept in {out}/."
        )
        return EXIT_BUDGET
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} image(s) skipped[/yellow]:")
        for path, reason in summary.skipped[:20]:
            console.print(f"  {shown(path)}: {shown(reason)}")
        return EXIT_SKIPPED
    return 0


class _RichListener:
    def __init__(self, bar: Progress, description: str) -> None:
        self.bar = bar
        self.task_id = bar.add_task(description, total=None)

    def expect(self, total: int) -> None:
        self.bar.update(self.task_id, total=total)

    def advance(self, done: int) -> None:
        self.bar.advance(self.task_id, done)


class progress_bar:  # noqa: N801 - used as a context manager, reads like a function
    """A rich progress bar fed by ``tasks.progress`` while the flow runs."""

    def __init__(self, description: str) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeRemainingColumn(),
            console=console,
        )
        self.listener = _RichListener(self.bar, description)

    def __enter__(self) -> Progress:
        self.bar.start()
        progress.add_listener(self.listener)
        return self.bar

    def __exit__(self, *exc_info: object) -> None:
        progress.remove_listener(self.listener)
        self.bar.stop()
