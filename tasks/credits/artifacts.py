"""What a run's credits look like to people: a Prefect table and a markdown summary.

Both are keyed by the dataset, so the Prefect UI keeps one history per dataset; dataset
names are redacted first, because a dataset may be named by a URL that carries a key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.credits.account import BudgetScope, CreditAccount
from tasks.credits.ledger import CreditLedger
from tasks.credits.location import redact
from tasks.credits.rates import CREDIT_DECIMALS, credits_left, format_credits
from tasks.markdown import markdown_cell, markdown_code

_MAX_TABLE_ROWS = 200  # runs shown in the table artifact (the ledger keeps them all)


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
    run_credits = round(float(this_run["credits"].sum()), CREDIT_DECIMALS)
    total = ledger.used(dataset)
    lines = [
        f"# Credits: {markdown_cell(redact(dataset))}",
        "",
        f"- This run (`{run_id}`): {int(this_run['images'].sum())} image(s) charged, "
        f"{format_credits(run_credits)} credits (images charged before are free)",
        f"- Dataset total: {format_credits(total)} credits, "
        f"{int(runs['images'].sum())} image charge(s) in {runs['run_id'].nunique()} "
        "run(s)",
    ]
    if max_credits is not None:
        used = run_credits if budget_scope == "run" else total
        left = credits_left(max_credits, used)
        lines.append(
            f"- Budget ({'this run' if budget_scope == 'run' else 'dataset'}): "
            f"{format_credits(max_credits)} credits, used {format_credits(used)}, "
            f"left {format_credits(left)}"
        )
    lines += [
        f"- Ledger: {markdown_code(ledger.name)}",
        "",
        "| run | model | task | images | credits | last charged |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in runs.head(_MAX_TABLE_ROWS).itertuples():
        lines.append(
            f"| `{row.run_id}` | {markdown_cell(row.model)} | {row.task} "
            f"| {row.images} | {format_credits(row.credits)} | {row.last_charged_at} |"
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


def _plain(value: Any) -> Any:
    """A Python value for a Prefect table (numpy scalars are not JSON)."""
    return value.item() if hasattr(value, "item") else value
