"""The ``autolabel`` command line: each command starts a flow with a progress bar.

Commands live one job a module (``cli.label``, ``cli.preview``, ``cli.run``,
``cli.deploy``, ``cli.ui``, ``cli.evaluate``, ``cli.train``) and share their options
through ``cli.options``; exit codes are listed in ``cli.output``.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cli import deploy, evaluate, label, preview, run, train, ui
from cli.output import EXIT_FAILED, debugging, print_error

app = typer.Typer(
    help="Label images with foundation models, through Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show tracebacks behind error lines (AUTOLABEL_DEBUG=1)."
        ),
    ] = False,
) -> None:
    """Label images with foundation models, through Prefect flows."""
    if debug:
        os.environ["AUTOLABEL_DEBUG"] = "1"
    # Before any flow starts Prefect's temporary server: it must not outlive us.
    from tasks.prefect_server import ensure_server_dies_with_this_process

    ensure_server_dies_with_this_process()


app.command()(label.label)
app.command()(label.credits)
app.command()(preview.preview)
app.command()(run.run)
app.command()(run.approve)
app.command("notify-upload")(deploy.notify_upload)
app.command("label-sharded")(deploy.label_sharded)
app.command()(ui.ui)
app.command()(evaluate.evaluate)
app.command()(train.train)


def console_script() -> None:
    """The ``autolabel`` command: an unexpected error is one line and exit 1, not a
    traceback (``--debug`` or ``AUTOLABEL_DEBUG=1`` shows it)."""
    try:
        app()
    except Exception as error:
        if debugging():
            raise
        print_error(
            f"{type(error).__name__}: {error} (--debug or AUTOLABEL_DEBUG=1 shows "
            "the traceback)"
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    console_script()
