"""Credits: rates, a ledger that charges each image once, the budget, the artifacts."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import re
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from tasks import credits as credits_module
from tasks.credits import (
    BudgetExceeded,
    ChargeResult,
    CreditAccount,
    CreditLedger,
    CreditRates,
    credits_table,
    dataset_artifact_key,
    format_credits,
    record_credits_artifacts,
    redact,
    render_credits_markdown,
    resolve_ledger_path,
)
from tasks.credits import artifacts as artifacts_module
from tasks.images import ImageRef, decode_image
from tasks.labels import IMAGE_SCHEMA, ImageRecord, images_to_frame
from tasks.labels import write_parquet_atomically as write_parquet
from tests.postgres import PASSWORD

pytest_plugins = ["tests.postgres"]  # the postgres_url fixture

MODEL = "IDEA-Research/grounding-dino-tiny"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> CreditLedger:
    """Every ledger test runs on both storages: the same rules, the same results."""
    if request.param == "postgresql":
        return CreditLedger(request.getfixturevalue("postgres_url"))
    return CreditLedger(tmp_path / "ledger" / "credits.sqlite")


def ids(*numbers: int) -> list[str]:
    return [f"img{n:03d}" for n in numbers]


# --- rates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "model", "expected"),
    [
        ("detect", None, 0.01),
        ("segment", None, 0.02),
        ("classify", None, 0.005),
        ("classify-multi", None, 0.005),
        ("trained", None, 0.002),
        ("detect", "big/model", 0.05),  # a per-model rate replaces the task's
        ("segment", "big/model", 0.05),
        ("detect", "other/model", 0.01),
    ],
)
def test_rate_per_task_and_model(task: str, model: str | None, expected: float):
    rates = CreditRates(models={"big/model": 0.05})

    assert rates.rate(task, model) == pytest.approx(expected)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_rates_load_from_yaml_or_json(tmp_path: Path, suffix: str):
    data = {"detect": 0.02, "classify-multi": 0.1, "models": {"m": 1.5}}
    path = tmp_path / f"rates{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else _yaml(data))

    rates = CreditRates.from_file(path)

    assert rates.rate("detect") == 0.02
    assert rates.rate("classify-multi") == 0.1
    assert rates.rate("segment") == 0.02  # default kept
    assert rates.rate("detect", "m") == 1.5


@pytest.mark.parametrize(
    "data",
    [
        {"detect": -0.01},
        {"detect": float("inf")},
        {"models": {"m": -1}},
        {"detection": 0.01},  # a typo must not silently fall back to the default
    ],
)
def test_invalid_rates_are_refused(data: dict):
    with pytest.raises(ValidationError):
        CreditRates.model_validate(data)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data)


# --- ledger ------------------------------------------------------------------------


def test_charge_is_idempotent_per_dataset_image_model_and_task(ledger: CreditLedger):
    first = ledger.charge("ds", "run-1", MODEL, "detect", ids(1, 2, 3))
    again = ledger.charge("ds", "run-2", MODEL, "detect", ids(2, 3, 4, 4))

    assert first == ChargeResult(newly_charged=3, already_charged=0, credits=0.03)
    assert again == ChargeResult(newly_charged=1, already_charged=2, credits=0.01)
    assert ledger.used("ds") == pytest.approx(0.04)
    rows = ledger.rows("ds")
    assert list(rows["image_id"]) == ids(1, 2, 3, 4)
    assert list(rows["run_id"]) == ["run-1"] * 3 + ["run-2"]  # first charge kept


@pytest.mark.parametrize(
    ("dataset", "model", "task"),
    [
        ("other", MODEL, "detect"),
        ("ds", "other/model", "detect"),
        ("ds", MODEL, "segment"),
    ],
)
def test_another_dataset_model_or_task_is_charged_again(
    ledger: CreditLedger, dataset: str, model: str, task: str
):
    ledger.charge("ds", "run-1", MODEL, "detect", ids(1, 2))

    result = ledger.charge(dataset, "run-1", model, task, ids(1, 2))

    assert result.newly_charged == 2


def test_used_remaining_and_rows_filter_by_dataset_and_run(ledger: CreditLedger):
    ledger.charge("a", "run-1", MODEL, "detect", ids(*range(10)))
    ledger.charge("a", "run-2", MODEL, "detect", ids(*range(10, 15)))
    ledger.charge("b", "run-2", MODEL, "segment", ids(1))

    assert ledger.used() == pytest.approx(0.17)
    assert ledger.used("a") == pytest.approx(0.15)
    assert ledger.used("a", run_id="run-2") == pytest.approx(0.05)
    assert ledger.remaining(0.2, "a") == pytest.approx(0.05)
    assert ledger.remaining(0.1, "a") == 0.0
    rows = ledger.rows()
    assert list(rows.columns) == credits_module.LEDGER_COLUMNS
    assert len(rows) == 16 and len(ledger.rows("b")) == 1
    assert rows["credits"].dtype == "float64"
    totals = ledger.totals()
    assert totals[["dataset", "task", "images", "runs"]].values.tolist() == [
        ["a", "detect", 15, 2],
        ["b", "segment", 1, 1],
    ]


def test_empty_ledger_reads_as_zero(ledger: CreditLedger):
    assert ledger.used() == 0.0
    assert ledger.rows().empty and ledger.runs().empty and ledger.totals().empty
    assert ledger.charge("ds", "r", MODEL, "detect", []) == ChargeResult(0, 0, 0.0)


def test_ledger_survives_reopening_and_uses_wal(tmp_path: Path):
    path = tmp_path / "credits.sqlite"
    CreditLedger(path).charge("ds", "r", MODEL, "detect", ids(1))

    reopened = CreditLedger(path)

    assert reopened.used("ds") == pytest.approx(0.01)
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_threads_charging_overlapping_images_charge_each_once(ledger: CreditLedger):
    results: list[ChargeResult] = []
    batches = [ids(*range(start, start + 60)) for start in range(0, 200, 20)]

    def charge(batch: list[str]) -> None:
        results.append(ledger.charge("ds", "run", MODEL, "detect", batch))

    threads = [threading.Thread(target=charge, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    unique = len({i for batch in batches for i in batch})
    assert sum(r.newly_charged for r in results) == unique
    assert len(ledger.rows()) == unique
    assert ledger.used() == pytest.approx(unique * 0.01)


def _charge_in_process(path: str, start: int) -> None:
    CreditLedger(path).charge(
        "ds", f"run-{start}", MODEL, "detect", ids(*range(start, start + 50))
    )


def test_processes_charging_overlapping_images_charge_each_once(tmp_path: Path):
    path = str(tmp_path / "credits.sqlite")
    CreditLedger(path)
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_charge_in_process, args=(path, start))
        for start in (0, 25, 50, 75)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)

    assert [p.exitcode for p in processes] == [0] * 4
    rows = CreditLedger(path).rows()
    assert len(rows) == 125 and rows["image_id"].is_unique


# --- budget ------------------------------------------------------------------------


def test_budget_allows_a_chunk_that_fits(ledger: CreditLedger):
    ledger.charge("ds", "run", MODEL, "detect", ids(1, 2))

    needed = ledger.check_budget(
        0.05, dataset="ds", model=MODEL, task="detect", image_ids=ids(1, 2, 3, 4, 5)
    )

    assert needed == pytest.approx(0.03)  # images 1 and 2 are already paid for


def test_budget_exceeded_says_used_needed_and_left(ledger: CreditLedger):
    ledger.charge("s3://key:secret@bucket/ds", "run", MODEL, "detect", ids(1, 2))

    with pytest.raises(BudgetExceeded) as raised:
        ledger.check_budget(
            0.03,
            dataset="s3://key:secret@bucket/ds",
            model=MODEL,
            task="detect",
            image_ids=ids(3, 4),
        )

    message = str(raised.value)
    assert message == "budget 0.03 credits: used 0.02, this chunk needs 0.02, left 0.01"
    assert (raised.value.used, raised.value.needed, raised.value.left) == (
        pytest.approx(0.02),
        pytest.approx(0.02),
        pytest.approx(0.01),
    )
    clone = pickle.loads(pickle.dumps(raised.value))
    assert str(clone) == message


def test_budget_exactly_spent_is_allowed_and_charged_images_are_free(
    ledger: CreditLedger,
):
    # 0.01 * 3 is 0.030000000000000002 in floats: must still fit a 0.03 budget.
    ledger.check_budget(
        0.03, dataset="ds", model=MODEL, task="detect", image_ids=ids(1, 2, 3)
    )
    ledger.charge("ds", "run", MODEL, "detect", ids(1, 2, 3))

    assert (
        ledger.check_budget(
            0.0, dataset="ds", model=MODEL, task="detect", image_ids=ids(1, 2, 3)
        )
        == 0.0
    )


def test_budget_per_run_counts_only_that_runs_charges(ledger: CreditLedger):
    ledger.charge("ds", "old-run", MODEL, "detect", ids(*range(100)))

    assert ledger.check_budget(
        0.05, dataset="ds", model=MODEL, task="detect", image_ids=ids(200), run_id="new"
    ) == pytest.approx(0.01)
    with pytest.raises(BudgetExceeded):
        ledger.check_budget(
            0.05, dataset="ds", model=MODEL, task="detect", image_ids=ids(200)
        )


@pytest.mark.parametrize("max_credits", [-1.0, float("nan")])
def test_a_meaningless_budget_is_refused(ledger: CreditLedger, max_credits: float):
    with pytest.raises(ValueError, match="max credits"):
        ledger.check_budget(
            max_credits, dataset="ds", model=MODEL, task="detect", image_ids=ids(1)
        )


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (0.030000000000000002, "0.03"), (12.5, "12.5"), (3, "3"), (1e-7, "0")],
)
def test_format_credits(value: float, text: str):
    assert format_credits(value) == text


# --- a run, chunk by chunk ---------------------------------------------------------


def _write_images(folder: Path, count: int) -> list[ImageRef]:
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for n in range(count):
        path = folder / f"{n}.png"
        Image.new("RGB", (8, 8), (n * 20, 0, 0)).save(path)
        refs.append(ImageRef(str(path), path.name))
    return refs


def _label_chunk(account: CreditAccount, refs, out: Path, key: str, run_id: str):
    """What the label task does around labeling: check, write the shard, charge."""
    account.check_chunk([ref.uri for ref in refs], run_id)
    records = []
    for ref in refs:
        decoded = decode_image(ref)
        records.append(decoded if isinstance(decoded, ImageRecord) else decoded.record)
    shard = out / "images" / f"chunk-{key}.parquet"
    write_parquet(images_to_frame(records, run_id=run_id), shard, IMAGE_SCHEMA)
    return account.charge_images_shard(shard, run_id)


def test_run_stops_at_the_budget_and_a_resume_pays_only_for_new_images(tmp_path: Path):
    refs = _write_images(tmp_path / "src", 6)
    (tmp_path / "src" / "broken.png").write_bytes(b"not a png")
    refs.append(ImageRef(str(tmp_path / "src" / "broken.png"), "broken.png"))
    chunks = [refs[0:2], refs[2:4], refs[4:7]]
    out = tmp_path / "out"
    account = CreditAccount(
        ledger_path=str(resolve_ledger_path(out)),
        dataset="photos",
        model=MODEL,
        max_credits=0.03,
    )

    first = _label_chunk(account, chunks[0], out, "a", "run-1")
    with pytest.raises(
        BudgetExceeded, match="used 0.02, this chunk needs 0.02, left 0.01"
    ):
        _label_chunk(account, chunks[1], out, "b", "run-1")

    assert first == ChargeResult(2, 0, 0.02)
    assert len(list((out / "images").glob("*.parquet"))) == 1  # kept, nothing lost
    # A resume (a new run, a larger budget) reuses chunk "a" for free. The check
    # counts broken.png (hashed, not decoded yet), but only readable images are charged.
    account = account.model_copy(update={"max_credits": 0.05})
    results = [
        _label_chunk(account, chunk, out, key, "run-2")
        for chunk, key in zip(chunks, "abc", strict=True)
    ]
    assert [r.newly_charged for r in results] == [0, 2, 2]  # broken.png is free
    assert [r.already_charged for r in results] == [2, 0, 0]
    assert account.ledger().used("photos") == pytest.approx(0.06)
    assert (out / "credits.sqlite").is_file()


def test_chunk_check_hashes_files_like_the_decoder(tmp_path: Path):
    refs = _write_images(tmp_path / "src", 2)
    account = CreditAccount(
        ledger_path=str(tmp_path / "c.sqlite"), dataset="d", model=MODEL
    )
    account.charge([decode_image(refs[0]).record.image_id], "run")

    assert account.check_chunk([r.uri for r in refs], "run") == pytest.approx(0.01)


def test_account_is_a_hashable_flow_parameter(tmp_path: Path):
    account = CreditAccount(
        ledger_path="x.sqlite",
        dataset="d",
        model=MODEL,
        rates=CreditRates(models={"m": 1}),
    )

    assert hash(account) == hash(account.model_copy())
    assert CreditAccount.model_validate_json(account.model_dump_json()) == account


def test_ledger_path_is_configured_or_in_the_output(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("AUTOLABEL_CREDITS_LEDGER", raising=False)
    assert resolve_ledger_path(tmp_path) == tmp_path / "credits.sqlite"
    assert resolve_ledger_path(tmp_path, tmp_path / "x.db") == tmp_path / "x.db"


def test_a_database_url_is_kept_without_its_password(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("AUTOLABEL_CREDITS_LEDGER", raising=False)
    url = "postgresql://me:pa%3Ass@db.example:5433/credits?sslmode=require"
    public = "postgresql://me@db.example:5433/credits?sslmode=require"

    assert resolve_ledger_path(tmp_path, url) == public
    # A CLI option typed as a Path collapses '//': still the same database.
    assert resolve_ledger_path(tmp_path, Path(url)) == public
    assert resolve_ledger_path(tmp_path, public + "&password=pw2") == public
    monkeypatch.setenv("AUTOLABEL_CREDITS_LEDGER", url)
    assert resolve_ledger_path(tmp_path) == public  # the environment's ledger
    assert resolve_ledger_path(tmp_path, tmp_path / "x.db") == tmp_path / "x.db"


# --- artifacts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset",
    [
        "photos",
        "My Photos/2024 (ünïcode)",
        "/home/me/data/cats",
        "s3://AKIA:topsecret@bucket/x?api_key=abc123",
        "x" * 300,
    ],
)
def test_artifact_key_is_stable_and_valid(dataset: str):
    key = dataset_artifact_key(dataset)

    assert re.fullmatch(r"[a-z0-9-]+", key)
    assert key.startswith("credits-") and len(key) <= 60
    assert key == dataset_artifact_key(dataset)
    assert "topsecret" not in key and "abc123" not in key


def test_similar_dataset_names_get_different_keys():
    assert dataset_artifact_key("My Photos") != dataset_artifact_key("my-photos")


def test_redact_hides_url_passwords_and_keys():
    text = redact("https://user:pw@host/p?api_key=abc&x=1 s3://k@b/y?token=t")

    assert "pw" not in text and "abc" not in text and "=t" not in text
    assert "x=1" in text and "host/p" in text


def test_table_and_markdown_hold_plain_values(ledger: CreditLedger):
    ledger.charge("ds", "run-1", MODEL, "detect", ids(1, 2, 3))
    ledger.charge("ds", "run-2", MODEL, "detect", ids(4))
    ledger.charge("other", "run-2", MODEL, "detect", ids(9))

    table = credits_table(ledger, "ds")
    markdown = render_credits_markdown(ledger, "ds", "run-2", max_credits=1.0)

    assert [row["run_id"] for row in table] == ["run-2", "run-1"]
    assert [row["images"] for row in table] == [1, 3]
    assert all(
        type(value) in (int, float, str) for row in table for value in row.values()
    )
    json.dumps(table)
    assert "This run (`run-2`): 1 image(s) charged, 0.01 credits" in markdown
    assert "Dataset total: 0.04 credits" in markdown
    assert "Budget (this run): 1 credits, used 0.01, left 0.99" in markdown


def test_record_credits_artifacts_uses_the_dataset_key(
    ledger: CreditLedger, monkeypatch: pytest.MonkeyPatch
):
    created: list[dict] = []
    monkeypatch.setattr(
        artifacts_module, "create_table_artifact", lambda **kw: created.append(kw)
    )
    monkeypatch.setattr(
        artifacts_module, "create_markdown_artifact", lambda **kw: created.append(kw)
    )
    dataset = "s3://key:hunter2@bucket/photos"
    ledger.charge(dataset, "run-1", MODEL, "detect", ids(1, 2))

    key = record_credits_artifacts(ledger, dataset, "run-1", max_credits=5)

    table, markdown = created
    assert key == table["key"] == dataset_artifact_key(dataset)
    assert markdown["key"] == f"{key}-summary"
    assert table["table"][0]["images"] == 2
    assert "hunter2" not in json.dumps(created)
    assert f"Ledger: `{ledger.name}`" in markdown["markdown"]
    assert PASSWORD not in json.dumps(created)  # a database ledger: no password
