"""The ``train`` and ``label`` commands as one typer app, for tests until ``train`` is
registered in ``cli.main`` (then ``cli.main.app`` does the same). Runnable as
``python -m tests.tasks.training.train_app train OUT ...`` for tests that kill it."""

from __future__ import annotations

import typer

from cli.label import label
from cli.train import train

app = typer.Typer(pretty_exceptions_enable=False)
app.command()(train)
app.command()(label)

if __name__ == "__main__":
    app()
