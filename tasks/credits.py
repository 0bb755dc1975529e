"""Credits: what labeling costs, a ledger that never charges an image twice, a budget.

A charge is one row per (dataset, image content hash, model, task) in an SQLite file
(WAL mode, the embedded default; ``OUT/credits.sqlite`` unless a path is configured).
The unique key makes charging idempotent: a retried task, a resumed run or a rerun with
other thresholds inserts nothing new, so it costs nothing. Preview (test) results are
never charged: only the batch labeling calls ``charge``.

How a chunk is charged (see ``CreditAccount``):

1. Before labeling, ``check_chunk`` hashes the chunk's files and asks whether the budget
   allows charging those not charged yet; if not it raises ``BudgetExceeded`` and the
   chunk is not labeled (shards already written stay; nothing is lost).
2. After the chunk's shards are written, ``charge_images_shard`` charges the readable
   images of the manifest shard. It is also safe to call for a shard reused from an
   earlier run: already charged images are free, and a crash between writing a shard and
   charging it is healed on the next run.

With several chunks labeled at once, each checks the budget before any of them charges,
so a run can overshoot by at most the chunks in flight (one with the default runner).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from model_loaders.protocol import TASK_BACKENDS, ModelSpec
from tasks.images import file_content_id

TaskKind = Literal["detect", "segment", "classify", "classify-multi", "trained"]
BudgetScope = Literal["run", "dataset"]
LEDGER_FILE_NAME = "credits.sqlite"
_ROUND = 9  # credits are summed as floats; 9 decimals hide the binary noise
_MAX_TABLE_ROWS = 200  # runs shown in the table artifact (the ledger keeps them all)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    image_id TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    run_id TEXT NOT NULL,
    credits REAL NOT NULL,
    charged_at TEXT NOT NULL,
    UNIQUE (dataset, image_id, model, task)
);
CREATE INDEX IF NOT EXISTS charges_by_run ON charges (dataset, run_id);
"""
LEDGER_COLUMNS = [
    "dataset",
    "image_id",
    "model",
    "task",
    "run_id",
    "credits",
    "charged_at",
]


class CreditRates(BaseModel):
    """Credits per labeled image, per task kind, with optional per-model overrides.

    Defaults: detection 1 credit per 100 images, segmentation 1 per 50, classification
    1 per 200 (single- or multi-label), a trained (your own) model 1 per 500. Loadable
    from YAML or JSON, e.g. ``{detect: 0.01, models: {my/big-model: 0.05}}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    detect: float = Field(0.01, ge=0.0, allow_inf_nan=False)
    segment: float = Field(0.02, ge=0.0, allow_inf_nan=False)
    classify: float = Field(0.005, ge=0.0, allow_inf_nan=False)
    classify_multi: float = Field(
        0.005, ge=0.0, allow_inf_nan=False, alias="classify-multi"
    )
    trained: float = Field(0.002, ge=0.0, allow_inf_nan=False)
    models: dict[str, Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Per-model rate per image, replacing its task kind's rate.",
    )

    def __hash__(self) -> int:
        return hash((self.model_dump_json(),))

    def rate(self, task: TaskKind, model: str | None = None) -> float:
        """Credits for one image labeled by ``model`` for ``task``."""
        if model is not None and model in self.models:
            return float(self.models[model])
        return float(getattr(self, task.replace("-", "_")))

    @classmethod
    def from_file(cls, path: str | Path) -> CreditRates:
        """Rates from a YAML or JSON file (JSON is YAML); unknown keys are refused."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"credit rates file {path}: expected a mapping of rates")
        return cls.model_validate(data)


@dataclass(frozen=True)
class ChargeResult:
    """What one ``charge`` did: images newly and already charged, credits added."""

    newly_charged: int
    already_charged: int
    credits: float


class BudgetExceeded(RuntimeError):
    """Labeling more would spend over ``--max-credits``; the message has the sums."""

    def __init__(self, *, max_credits: float, used: float, needed: float) -> None:
        self.max_credits = max_credits
        self.used = used
        self.needed = needed
        self.left = max(0.0, round(max_credits - used, _ROUND))
        super().__init__(
            f"budget {format_credits(max_credits)} credits: "
            f"used {format_credits(used)}, this chunk needs {format_credits(needed)}, "
            f"left {format_credits(self.left)}"
        )

    def __reduce__(self):  # picklable across processes (Dask, Prefect results)
        return (_budget_exceeded, (self.max_credits, self.used, self.needed))


def _budget_exceeded(max_credits: float, used: float, needed: float) -> BudgetExceeded:
    return BudgetExceeded(max_credits=max_credits, used=used, needed=needed)


def format_credits(value: float) -> str:
    """A credit amount for people: at most 4 decimals, no trailing zeros."""
    text = f"{round(float(value), 4):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class CreditLedger:
    """The persistent ledger: one SQLite file, safe for several threads and processes.

    Every call opens its own short connection (sqlite3 connections must not be shared
    between threads); writes take the database lock up front (BEGIN IMMEDIATE) and WAL
    mode lets readers go on meanwhile. Keep the file on a local disk: SQLite locking
    over network filesystems is unreliable.
    """

    def __init__(
        self,
        path: str | Path,
        rates: CreditRates | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.rates = rates or CreditRates()
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            yield conn
        finally:
            conn.close()

    def charge(
        self,
        dataset: str,
        run_id: str,
        model: str,
        task: TaskKind,
        image_ids: Iterable[str],
    ) -> ChargeResult:
        """Charge each image once per (dataset, model, task); charged ones are free.

        All rows go in one transaction: a crash charges the whole batch or none of it.
        """
        ids = _unique_ids(image_ids)
        rate = self.rates.rate(task, model)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO charges"
                    " (dataset, image_id, model, task, run_id, credits, charged_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((dataset, i, model, task, run_id, rate, now) for i in ids),
                )
                new = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ChargeResult(
            newly_charged=new,
            already_charged=len(ids) - new,
            credits=round(new * rate, _ROUND),
        )

    def uncharged(
        self, dataset: str, model: str, task: TaskKind, image_ids: Iterable[str]
    ) -> list[str]:
        """The images (in the given order) that ``charge`` would still charge."""
        ids = _unique_ids(image_ids)
        if not ids:
            return []
        with self._connect() as conn:
            conn.execute("CREATE TEMP TABLE asked (image_id TEXT PRIMARY KEY)")
            conn.executemany("INSERT INTO asked VALUES (?)", ((i,) for i in ids))
            charged = {
                row[0]
                for row in conn.execute(
                    "SELECT asked.image_id FROM asked JOIN charges"
                    " ON charges.image_id = asked.image_id"
                    " WHERE charges.dataset = ? AND charges.model = ?"
                    " AND charges.task = ?",
                    (dataset, model, task),
                )
            }
        return [i for i in ids if i not in charged]

    def cost(
        self, dataset: str, model: str, task: TaskKind, image_ids: Iterable[str]
    ) -> float:
        """Credits that charging ``image_ids`` would add now."""
        new = self.uncharged(dataset, model, task, image_ids)
        return round(len(new) * self.rates.rate(task, model), _ROUND)

    def used(self, dataset: str | None = None, run_id: str | None = None) -> float:
        """Credits charged, for one dataset and/or run, or for everything."""
        where, params = _where(dataset=dataset, run_id=run_id)
        with self._connect() as conn:
            (total,) = conn.execute(
                f"SELECT COALESCE(SUM(credits), 0) FROM charges{where}", params
            ).fetchone()
        return round(float(total), _ROUND)

    def remaining(
        self,
        max_credits: float,
        dataset: str | None = None,
        run_id: str | None = None,
    ) -> float:
        """Credits left of ``max_credits`` after what was charged (never below 0)."""
        return max(0.0, round(max_credits - self.used(dataset, run_id), _ROUND))

    def check_budget(
        self,
        max_credits: float,
        *,
        dataset: str,
        model: str,
        task: TaskKind,
        image_ids: Iterable[str],
        run_id: str | None = None,
    ) -> float:
        """The credits charging ``image_ids`` needs; BudgetExceeded if over budget.

        ``run_id`` given: the budget is for that run's charges (``--max-credits`` per
        run); otherwise for everything charged to the dataset.
        """
        if not (math.isfinite(max_credits) and max_credits >= 0):
            raise ValueError(f"max credits {max_credits}: must be a number >= 0")
        needed = self.cost(dataset, model, task, image_ids)
        used = self.used(dataset, run_id)
        if needed > 0 and used + needed > max_credits + 10**-_ROUND:
            raise BudgetExceeded(max_credits=max_credits, used=used, needed=needed)
        return needed

    def rows(self, dataset: str | None = None) -> pd.DataFrame:
        """Every charge (one row per image, model and task), oldest first."""
        where, params = _where(dataset=dataset)
        with self._connect() as conn:
            records = conn.execute(
                f"SELECT {', '.join(LEDGER_COLUMNS)} FROM charges{where} ORDER BY id",
                params,
            ).fetchall()
        frame = pd.DataFrame.from_records(records, columns=LEDGER_COLUMNS)
        return frame.astype({"credits": "float64"})

    def runs(self, dataset: str | None = None) -> pd.DataFrame:
        """Per run, model and task: images and credits charged, newest run first."""
        where, params = _where(dataset=dataset)
        with self._connect() as conn:
            records = conn.execute(
                "SELECT dataset, run_id, model, task, COUNT(*), SUM(credits),"
                " MIN(charged_at), MAX(charged_at)"
                f" FROM charges{where} GROUP BY dataset, run_id, model, task"
                " ORDER BY MAX(id) DESC",
                params,
            ).fetchall()
        return _summary_frame(
            records,
            ["dataset", "run_id", "model", "task", "images", "credits"],
        )

    def totals(self, dataset: str | None = None) -> pd.DataFrame:
        """Per dataset, model and task: images, credits, runs (autolabel credits)."""
        where, params = _where(dataset=dataset)
        with self._connect() as conn:
            records = conn.execute(
                "SELECT dataset, model, task, COUNT(*), SUM(credits),"
                " COUNT(DISTINCT run_id), MIN(charged_at), MAX(charged_at)"
                f" FROM charges{where} GROUP BY dataset, model, task"
                " ORDER BY dataset, model, task",
                params,
            ).fetchall()
        return _summary_frame(
            records, ["dataset", "model", "task", "images", "credits", "runs"]
        )


class CreditAccount(BaseModel):
    """Who pays for a labeling run and how much it may spend: a flow parameter.

    Small, frozen and hashable, so it travels to the labeling tasks like the settings;
    the ledger itself is opened inside each task (a connection is never passed around).
    """

    model_config = ConfigDict(frozen=True)

    ledger_path: str = Field(description="The SQLite ledger file.")
    dataset: str = Field(description="What the charges are booked to.")
    model: str = Field(description="The model id charged (settings.model.model).")
    task: TaskKind = "detect"
    rates: CreditRates = Field(default_factory=CreditRates)
    max_credits: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    budget_scope: BudgetScope = Field(
        "run",
        description="run: --max-credits caps this run's charges; dataset: all of them.",
    )

    def ledger(self) -> CreditLedger:
        return CreditLedger(self.ledger_path, self.rates)

    def check_images(self, image_ids: Iterable[str], run_id: str) -> float:
        """Credits the images need; BudgetExceeded if they would overspend."""
        ledger = self.ledger()
        if self.max_credits is None:
            return ledger.cost(self.dataset, self.model, self.task, image_ids)
        return ledger.check_budget(
            self.max_credits,
            dataset=self.dataset,
            model=self.model,
            task=self.task,
            image_ids=image_ids,
            run_id=run_id if self.budget_scope == "run" else None,
        )

    def check_chunk(self, uris: Iterable[str], run_id: str) -> float:
        """``check_images`` for files not decoded yet (hashed here, like the decoder).

        Unreadable files are left out; a corrupt but readable file is counted although
        it will be skipped, so the check errs on the safe side by at most those.
        """
        ids = [i for i in (file_content_id(uri) for uri in uris) if i is not None]
        return self.check_images(ids, run_id)

    def charge(self, image_ids: Iterable[str], run_id: str) -> ChargeResult:
        return self.ledger().charge(
            self.dataset, run_id, self.model, self.task, image_ids
        )

    def charge_images_shard(
        self, images_shard: str | Path, run_id: str
    ) -> ChargeResult:
        """Charge the readable images of one chunk's image manifest shard."""
        manifest = pd.read_parquet(images_shard, columns=["image_id", "skipped_reason"])
        readable = manifest.loc[manifest["skipped_reason"].isna(), "image_id"]
        return self.charge(readable.astype(str).tolist(), run_id)


def credit_kind(model: ModelSpec) -> TaskKind:
    """The rate a run is charged at: its task, or 'trained' for the user's own model."""
    foundation = set(TASK_BACKENDS.values())
    return model.task if model.backend in foundation else "trained"


def resolve_ledger_path(out: str | Path, configured: str | Path | None = None) -> Path:
    """The configured ledger file, or ``OUT/credits.sqlite`` (the embedded default).

    One ledger per output folder means another output folder starts from zero: point
    every run at one shared path to book all runs of a dataset together.
    """
    if configured:
        return Path(configured).expanduser()
    return Path(out) / LEDGER_FILE_NAME


def redact(text: str) -> str:
    """``text`` without URL passwords or key-like query values, for messages and
    artifacts (a dataset may be named by a URL that carries an API key)."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    return re.sub(
        r"(?i)([?&;](?:api[_-]?key|key|token|secret|password|signature|sig)=)[^&#\s]*",
        r"\1***",
        text,
    )


def dataset_artifact_key(dataset: str, prefix: str = "credits") -> str:
    """A stable Prefect artifact key for ``dataset``: lowercase letters, digits, dashes.

    The slug makes it readable, the hash keeps datasets whose slugs collide apart.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", redact(dataset).lower()).strip("-")[:40]
    digest = hashlib.sha256(dataset.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return "-".join(part for part in (prefix, slug.strip("-"), digest) if part)


def credits_table(ledger: CreditLedger, dataset: str) -> list[dict[str, Any]]:
    """The dataset's runs as table rows of plain Python values (newest first)."""
    runs = ledger.runs(dataset).drop(columns="dataset").head(_MAX_TABLE_ROWS)
    return [
        {key: _plain(value) for key, value in row.items()}
        for row in runs.to_dict("records")
    ]


def render_credits_markdown(
    ledger: CreditLedger,
    dataset: str,
    run_id: str,
    *,
    max_credits: float | None = None,
    budget_scope: BudgetScope = "run",
    charged_runs: Sequence[str] = (),
) -> str:
    """A markdown summary: this run's charges, the dataset's total, the budget.

    ``charged_runs``: runs whose charges are this run's too (a sharded batch's shards).
    """
    runs = ledger.runs(dataset)
    this_run = runs[runs["run_id"].isin([run_id, *charged_runs])]
    run_credits = round(float(this_run["credits"].sum()), _ROUND)
    total = ledger.used(dataset)
    lines = [
        f"# Credits: {_cell(redact(dataset))}",
        "",
        f"- This run (`{run_id}`): {int(this_run['images'].sum())} image(s) charged, "
        f"{format_credits(run_credits)} credits (images charged before are free)",
        f"- Dataset total: {format_credits(total)} credits, "
        f"{int(runs['images'].sum())} image charge(s) in {runs['run_id'].nunique()} "
        "run(s)",
    ]
    if max_credits is not None:
        used = run_credits if budget_scope == "run" else total
        left = max(0.0, round(max_credits - used, _ROUND))
        lines.append(
            f"- Budget ({'this run' if budget_scope == 'run' else 'dataset'}): "
            f"{format_credits(max_credits)} credits, used {format_credits(used)}, "
            f"left {format_credits(left)}"
        )
    lines += [
        f"- Ledger: `{ledger.path.name}`",
        "",
        "| run | model | task | images | credits | last charged |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in runs.head(_MAX_TABLE_ROWS).itertuples():
        lines.append(
            f"| `{row.run_id}` | {_cell(row.model)} | {row.task} | {row.images} "
            f"| {format_credits(row.credits)} | {row.last_charged_at} |"
        )
    if runs.empty:
        lines.append("| - | - | - | 0 | 0 | - |")
    return "\n".join(lines) + "\n"


def record_credits_artifacts(
    ledger: CreditLedger,
    dataset: str,
    run_id: str,
    *,
    max_credits: float | None = None,
    budget_scope: BudgetScope = "run",
    charged_runs: Sequence[str] = (),
) -> str:
    """Attach the dataset's credit table and a markdown summary to the current run.

    Both use the dataset's stable key, so the Prefect UI keeps one history per dataset
    (a new version per run). Returns the table artifact's key.
    """
    key = dataset_artifact_key(dataset)
    create_table_artifact(
        table=credits_table(ledger, dataset),
        key=key,
        description=f"Credits charged per run for dataset {redact(dataset)}",
    )
    create_markdown_artifact(
        markdown=render_credits_markdown(
            ledger,
            dataset,
            run_id,
            max_credits=max_credits,
            budget_scope=budget_scope,
            charged_runs=charged_runs,
        ),
        key=f"{key}-summary",
        description="Credits of this run, the dataset's total and the budget",
    )
    return key


@task(name="record-credits", cache_policy=NO_CACHE)
def record_credits_task(
    account: CreditAccount, run_id: str, charged_runs: Sequence[str] = ()
) -> str:
    """``record_credits_artifacts`` for a run's account."""
    return record_credits_artifacts(
        account.ledger(),
        account.dataset,
        run_id,
        max_credits=account.max_credits,
        budget_scope=account.budget_scope,
        charged_runs=charged_runs,
    )


def _unique_ids(image_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in image_ids if i))


def _where(**filters: str | None) -> tuple[str, tuple[str, ...]]:
    used = {name: value for name, value in filters.items() if value is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{name} = ?" for name in used), tuple(
        used.values()
    )


def _summary_frame(records: list[tuple], columns: list[str]) -> pd.DataFrame:
    columns = [*columns, "first_charged_at", "last_charged_at"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame["images"] = frame["images"].astype("int64")
    frame["credits"] = frame["credits"].astype("float64").round(_ROUND)
    if "runs" in frame:
        frame["runs"] = frame["runs"].astype("int64")
    return frame


def _plain(value: Any) -> Any:
    """A Python value for a Prefect table (numpy scalars are not JSON)."""
    return value.item() if hasattr(value, "item") else value


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
