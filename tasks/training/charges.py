"""Training's credits: each train image is charged once per epoch, at the ``train``
rate, in the same ledger as labeling.

A charge key is the image's content hash, the training's id and the epoch
(``<image_id>:<training_id>:epoch-<n>``), so a resumed or retried epoch charges
nothing twice while a new training of the same images is a new charge.
"""

from __future__ import annotations

from pathlib import Path

from tasks.credits import CreditAccount, CreditLedger, CreditRates, is_database_url
from tasks.training.data import TrainingData


def epoch_charge_keys(data: TrainingData, training_id: str, epoch: int) -> list[str]:
    """The ledger keys of one epoch over the train split."""
    return [f"{e.image_id}:{training_id}:epoch-{epoch}" for e in data.train]


def training_account(
    *,
    out: str | Path,
    base: str,
    ledger_path: str | Path,
    rates: CreditRates,
    dataset: str | None = None,
    max_credits: float | None = None,
) -> CreditAccount:
    """Who pays for a training: the ledger (``resolve_ledger_path``: default
    ``OUT/credits.sqlite``, or a PostgreSQL URL), booked to ``dataset``, else to the
    one dataset that ledger's charges were booked to, else to the output folder."""
    return CreditAccount(
        ledger_path=str(ledger_path),
        dataset=dataset or _labeled_dataset(ledger_path) or str(Path(out).resolve()),
        model=base,
        task="train",
        rates=rates,
        max_credits=max_credits,
    )


def _labeled_dataset(ledger_path: str | Path) -> str | None:
    if not is_database_url(ledger_path) and not Path(ledger_path).is_file():
        return None
    datasets = CreditLedger(ledger_path).totals()["dataset"].unique().tolist()
    return str(datasets[0]) if len(datasets) == 1 else None
