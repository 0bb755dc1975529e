"""Who pays for a labeling run and how much it may spend, checked chunk by chunk.

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

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tasks.credits.ledger import ChargeResult, CreditLedger
from tasks.credits.rates import CreditRates, TaskKind
from tasks.image_files import file_content_id

BudgetScope = Literal["run", "dataset"]


class CreditAccount(BaseModel):
    """Who pays for a labeling run and how much it may spend: a flow parameter.

    Small, frozen and hashable, so it travels to the labeling tasks like the settings;
    the ledger itself is opened inside each task (a connection is never passed around).
    """

    model_config = ConfigDict(frozen=True)

    ledger_path: str = Field(
        description="The ledger: an SQLite file, or postgresql://user@host:port/db "
        "(never with its password: each machine supplies that, see "
        "tasks.credits.location)."
    )
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
