"""Credits: what labeling costs, a ledger that never charges an image twice, a budget.

The price list and credit arithmetic (``rates``), the ledger that makes charging
idempotent (``ledger``) in an SQLite file or PostgreSQL (``storage``, ``postgres``,
``location``: where it lives and where a database password comes from), the
per-run account that checks the budget chunk by chunk (``account``), and the Prefect
artifacts that show it all (``artifacts``).

One module per job keeps each readable on its own; this package re-exports what the
rest of the code imports from ``tasks.credits``, so callers name the package, never a
module inside it.
"""

from __future__ import annotations

from tasks.credits.account import CreditAccount
from tasks.credits.artifacts import (
    credits_table,
    dataset_artifact_key,
    record_credits_artifacts,
    record_credits_task,
    redact,
    render_credits_markdown,
)
from tasks.credits.ledger import (
    LEDGER_COLUMNS,
    BudgetExceeded,
    ChargeResult,
    CreditLedger,
)
from tasks.credits.location import (
    LEDGER_ENV,
    LEDGER_SECRET_BLOCK,
    LedgerLocationError,
    LedgerUnavailable,
    is_database_url,
    resolve_ledger_path,
    shown_location,
)
from tasks.credits.rates import CreditRates, credit_kind, format_credits

__all__ = [
    "LEDGER_COLUMNS",
    "LEDGER_ENV",
    "LEDGER_SECRET_BLOCK",
    "LedgerLocationError",
    "LedgerUnavailable",
    "BudgetExceeded",
    "ChargeResult",
    "CreditAccount",
    "CreditLedger",
    "CreditRates",
    "credit_kind",
    "credits_table",
    "dataset_artifact_key",
    "format_credits",
    "is_database_url",
    "record_credits_artifacts",
    "record_credits_task",
    "redact",
    "render_credits_markdown",
    "resolve_ledger_path",
    "shown_location",
]
