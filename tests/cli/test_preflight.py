"""A run that cannot start fails at once, before any model loads: one line naming the
thing and the fix, the documented exit code, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.lock_holder import start_holder
from tests.photos import write_sample_photos

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail loudly if anything tries to load a model."""

    def refuse(spec):
        raise AssertionError("a model was loaded although the run cannot start")

    monkeypatch.setattr("model_loaders.cache.get_model", refuse)


def _cases(tmp_path: Path) -> list[tuple[list[str], int, str]]:
    """(arguments after `label`, exit code, words the one error line must hold)."""
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder")
    not_a_db = tmp_path / "ledger.sqlite"
    not_a_db.write_text("not a database")
    out = str(tmp_path / "out")
    return [
        ([str(tmp_path / "missing"), "--out", out], 1, "no such folder"),
        ([str(a_file), "--out", out], 1, "is a file, not a folder"),
        ([str(photos), "--out", str(a_file)], 1, "is a file: give a folder"),
        ([str(photos), "--out", str(photos / "out")], 2, "inside the source"),
        (
            [str(photos), "--out", out, "--credits-ledger", str(not_a_db)],
            1,
            "is not an SQLite database",
        ),
        ([str(photos), "--out", out, "--upload-to", "roboflow://only-one"], 2,
         "expected roboflow://WORKSPACE/PROJECT"),
    ]  # fmt: skip


# preview charges nothing and uploads nothing: the first four cases only.
@pytest.mark.parametrize(
    ("command", "case"),
    [(c, i) for c in ("label", "run") for i in range(6)]
    + [("preview", i) for i in range(4)],
)
def test_what_cannot_be_used_is_refused_before_the_model_loads(
    no_model_load, tmp_path, case, command
):
    args, code, words = _cases(tmp_path)[case]
    result = runner.invoke(app, [command, *args, "--class", "cat"])
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], result.output
    assert "Traceback" not in result.output


# At exit, which model code the process imported: loading any transformers model
# imports its ``modeling_*`` module.
_REPORT_MODEL_CODE = """
import atexit, sys
atexit.register(lambda: print("MODEL CODE:", sorted(
    m for m in sys.modules if m.startswith("transformers.models.") and ".modeling_" in m
), file=sys.stderr))
"""
# The console script, run as a user runs it.
_RUN_CLI = """
import runpy, sys
sys.argv = ["autolabel", *sys.argv[1:]]
runpy.run_module("cli.main", run_name="__main__")
"""
# The project's model loading, as the batch would call it.
_LOAD_MODEL = """
import sys
from model_loaders.cache import get_model
from model_loaders.protocol import ModelSpec
get_model(ModelSpec(model=sys.argv[1], device="cpu"))
"""


def test_a_bad_out_fails_before_the_real_model_is_loaded(tiny_grounding_dino, tmp_path):
    """The model option points at a real (tiny) model, yet the output folder is
    refused before any model code is even imported (no waiting for a load first)."""
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should go")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [
        *(sys.executable, "-c", _REPORT_MODEL_CODE + _RUN_CLI, "label", str(photos)),
        *("--class", "cat", "--model", tiny_grounding_dino, "--device", "cpu"),
    ]

    refused = subprocess.run(
        [*command, "--out", str(blocker / "out")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "--out" in refused.stderr and "not writable" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "MODEL CODE: []" in refused.stderr, refused.stderr

    # Loading that model is seen by the same report: the check above can fail.
    loaded = subprocess.run(
        [sys.executable, "-c", _REPORT_MODEL_CODE + _LOAD_MODEL, tiny_grounding_dino],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert "modeling_grounding_dino" in loaded.stderr


def test_debug_shows_the_traceback_behind_the_line(tmp_path):
    missing = str(tmp_path / "missing")
    quiet = runner.invoke(app, ["label", missing, "--class", "cat"])
    loud = runner.invoke(
        app, ["label", missing, "--class", "cat"], env={"AUTOLABEL_DEBUG": "1"}
    )
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.output
    assert "Traceback" in loud.output and "no such folder" in loud.output


def test_a_second_run_on_one_out_is_refused_in_one_line(no_model_load, tmp_path):
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    out = tmp_path / "out"
    holder = start_holder(out)  # another process, running on this --out
    try:
        result = runner.invoke(
            app, ["label", str(photos), "--out", str(out), "--class", "cat"]
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], result.output
    assert "autolabel label" in errors[0] and "Traceback" not in result.output


def test_a_description_too_long_for_sam3_is_refused_before_loading(
    no_model_load, tiny_sam3, tmp_path
):
    photos = tmp_path / "photos"
    write_sample_photos(photos)
    long = "cat: " + " ".join(["a very small striped cat sitting"] * 10)
    result = runner.invoke(
        app,
        ["label", str(photos), "--out", str(tmp_path / "out"), "--model", tiny_sam3,
         "--task", "segment", "--class", long, "--class", "dog"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "tokens long; SAM 3 reads at most" in errors[0]
