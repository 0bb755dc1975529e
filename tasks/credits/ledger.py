"""The credit ledger: a table that never charges an image twice.

A charge is one row per (dataset, image content hash, model, task), in an SQLite file
(the embedded default; ``OUT/credits.sqlite`` unless configured) or a PostgreSQL
database shared by workers on several machines (``tasks.credits.storage``).
The unique key makes charging idempotent: a retried task, a resumed run or a rerun with
other thresholds inserts nothing new, so it costs nothing. Preview (test) results are
never charged: only the batch labeling calls ``charge``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.credits.rates import (
    CREDIT_DECIMALS,
    CreditRates,
    TaskKind,
    credits_left,
    format_credits,
)
from tasks.credits.storage import open_storage

# The exactly-once key: a row that is there already inserts nothing (both databases).
_INSERT = (
    "INSERT INTO charges"
    " (dataset, image_id, model, task, run_id, credits, charged_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (dataset, image_id, model, task) DO NOTHING"
)
LEDGER_COLUMNS = [
    "dataset",
    "image_id",
    "model",
    "task",
    "run_id",
    "credits",
    "charged_at",
]


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
        self.left = credits_left(max_credits, used)
        super().__init__(
            f"budget {format_credits(max_credits)} credits: "
            f"used {format_credits(used)}, this chunk needs {format_credits(needed)}, "
            f"left {format_credits(self.left)}"
        )

    def __reduce__(self):  # picklable across processes (Dask, Prefect results)
        return (_budget_exceeded, (self.max_credits, self.used, self.needed))


def _budget_exceeded(max_credits: float, used: float, needed: float) -> BudgetExceeded:
    return BudgetExceeded(max_credits=max_credits, used=used, needed=needed)


class CreditLedger:
    """The persistent ledger: an SQLite file or a PostgreSQL database.

    ``location``: a file path (SQLite, the embedded default, for one machine) or a
    ``postgresql://user@host:port/db`` URL (for workers on several machines; see
    ``tasks.credits.location`` for where its password comes from). Both keep the same
    table with the same unique key; every rule lives here, the storage only runs it.
    """

    def __init__(
        self,
        location: str | Path,
        rates: CreditRates | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.storage = open_storage(location, timeout_s)
        self.rates = rates or CreditRates()

    @property
    def name(self) -> str:
        """The ledger as people see it: a file name, or a URL without password."""
        return self.storage.name

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
        ids = sorted(_unique_ids(image_ids))  # one order for all: fewer lock waits
        rate = self.rates.rate(task, model)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = [(dataset, i, model, task, run_id, rate, now) for i in ids]
        new = self.storage.write(lambda session: session.insert_many(_INSERT, rows))
        return ChargeResult(
            newly_charged=new,
            already_charged=len(ids) - new,
            credits=round(new * rate, CREDIT_DECIMALS),
        )

    def uncharged(
        self, dataset: str, model: str, task: TaskKind, image_ids: Iterable[str]
    ) -> list[str]:
        """The images (in the given order) that ``charge`` would still charge."""
        ids = _unique_ids(image_ids)
        if not ids:
            return []
        charged = set(
            self.storage.read(
                lambda session: [
                    row[0]
                    for part in _parts(ids)
                    for row in session.rows(
                        "SELECT image_id FROM charges WHERE dataset = ? AND model = ?"
                        f" AND task = ? AND image_id IN ({', '.join('?' * len(part))})",
                        (dataset, model, task, *part),
                    )
                ]
            )
        )
        return [i for i in ids if i not in charged]

    def cost(
        self, dataset: str, model: str, task: TaskKind, image_ids: Iterable[str]
    ) -> float:
        """Credits that charging ``image_ids`` would add now."""
        new = self.uncharged(dataset, model, task, image_ids)
        return round(len(new) * self.rates.rate(task, model), CREDIT_DECIMALS)

    def used(self, dataset: str | None = None, run_id: str | None = None) -> float:
        """Credits charged, for one dataset and/or run, or for everything."""
        where, params = _where(dataset=dataset, run_id=run_id)
        ((total,),) = self.storage.read(
            lambda session: session.rows(
                f"SELECT COALESCE(SUM(credits), 0) FROM charges{where}", params
            )
        )
        return round(float(total), CREDIT_DECIMALS)

    def remaining(
        self,
        max_credits: float,
        dataset: str | None = None,
        run_id: str | None = None,
    ) -> float:
        """Credits left of ``max_credits`` after what was charged (never below 0)."""
        return credits_left(max_credits, self.used(dataset, run_id))

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
        if needed > 0 and used + needed > max_credits + 10**-CREDIT_DECIMALS:
            raise BudgetExceeded(max_credits=max_credits, used=used, needed=needed)
        return needed

    def rows(self, dataset: str | None = None) -> pd.DataFrame:
        """Every charge (one row per image, model and task), oldest first."""
        where, params = _where(dataset=dataset)
        records = self.storage.read(
            lambda session: session.rows(
                f"SELECT {', '.join(LEDGER_COLUMNS)} FROM charges{where} ORDER BY id",
                params,
            )
        )
        frame = pd.DataFrame.from_records(records, columns=LEDGER_COLUMNS)
        return frame.astype({"credits": "float64"})

    def runs(self, dataset: str | None = None) -> pd.DataFrame:
        """Per run, model and task: images and credits charged, newest run first."""
        return self._summary(
            ["dataset", "run_id", "model", "task"], "MAX(id) DESC", dataset
        )

    def totals(self, dataset: str | None = None) -> pd.DataFrame:
        """Per dataset, model and task: images, credits, runs (autolabel credits)."""
        return self._summary(
            ["dataset", "model", "task"], "dataset, model, task", dataset, runs=True
        )

    def _summary(
        self, keys: list[str], order: str, dataset: str | None, *, runs: bool = False
    ) -> pd.DataFrame:
        """Charges grouped by ``keys`` (fixed column names, never user text):
        images, credits (and distinct runs), first and last charge time."""
        where, params = _where(dataset=dataset)
        group = ", ".join(keys)
        counted = ", COUNT(DISTINCT run_id)" if runs else ""
        records = self.storage.read(
            lambda session: session.rows(
                f"SELECT {group}, COUNT(*), SUM(credits){counted},"
                " MIN(charged_at), MAX(charged_at)"
                f" FROM charges{where} GROUP BY {group} ORDER BY {order}",
                params,
            )
        )
        columns = [*keys, "images", "credits"] + (["runs"] if runs else [])
        return _summary_frame(records, columns)


def _unique_ids(image_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in image_ids if i))


def _parts(ids: list[str], size: int = 500) -> list[list[str]]:
    """``ids`` in pieces small enough for one statement's parameters."""
    return [ids[start : start + size] for start in range(0, len(ids), size)]


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
    frame["credits"] = frame["credits"].astype("float64").round(CREDIT_DECIMALS)
    if "runs" in frame:
        frame["runs"] = frame["runs"].astype("int64")
    return frame
