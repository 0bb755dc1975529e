"""The ``autolabel`` command line: each command starts a flow with a progress bar.

Commands live one job a module (``cli.label``, ``cli.preview``, ``cli.run``,
``cli.deploy``, ``cli.ui``) and share their options through ``cli.options``; exit
codes are listed in ``cli.output``.
"""

from __future__ import annotations

import typer

from cli import deploy, label, preview, run, ui

app = typer.Typer(
    help="Label images with foundation models, through Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Label images with foundation models, through Prefect flows."""


app.command()(label.label)
app.command()(label.credits)
app.command()(preview.preview)
app.command()(run.run)
app.command()(run.approve)
app.command("notify-upload")(deploy.notify_upload)
app.command("label-sharded")(deploy.label_sharded)
app.command()(ui.ui)


if __name__ == "__main__":
    app()
