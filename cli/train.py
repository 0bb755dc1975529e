"""``autolabel train``: train a fast detector (or image classifier) on an output
folder's labels, then label with it (``autolabel label --model DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cli.options import CreditChoices, with_groups
from cli.output import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    exit_on,
    print_error,
    progress_bar,
    shown,
    usage,
)
from cli.settings import out_lock_or_exit, preflight_or_exit
from model_loaders.protocol import ModelLoadError
from tasks.credits import (
    CreditRates,
    LedgerLocationError,
    format_credits,
    resolve_ledger_path,
)
from tasks.training.base import BaseModelError
from tasks.training.data import TrainingDataError, read_training_data
from tasks.training.preflight import check_training_fits
from tasks.training.settings import TrainSettings
from tasks.training.state import TrainingStateError

DTYPES = ("auto", "float32", "float16", "bfloat16")


@with_groups
def train(
    out: Annotated[
        str, typer.Argument(help="Output folder of `autolabel label` to learn from.")
    ],
    base: Annotated[
        str,
        typer.Option(
            help="Base model: a Hugging Face id or folder of an object detector "
            "(RT-DETR, RT-DETRv2, D-FINE, DETR, ...; e.g. PekingU/rtdetr_v2_r18vd) or, "
            "for classification labels, an image classifier."
        ),
    ],
    out_model: Annotated[
        Path,
        typer.Option(
            help="Folder for the trained model (new or empty; the same folder "
            "resumes an interrupted training)."
        ),
    ],
    epochs: Annotated[
        int, typer.Option(min=1, help="Passes over the train split.")
    ] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 8,
    image_size: Annotated[
        int | None,
        typer.Option(
            min=32, help="Input size in pixels (default: the base processor's)."
        ),
    ] = None,
    learning_rate: Annotated[
        float, typer.Option(min=0.0, help="AdamW learning rate (cosine schedule).")
    ] = 1e-4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = (
        "auto"
    ),
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 autocast on a GPU, float32 on CPU), float32, float16 "
            "or bfloat16."
        ),
    ] = "auto",
    split: Annotated[
        str | None,
        typer.Option(
            help="train=0.8,val=0.2: which images train and which measure each epoch "
            "(default: OUT's export split, or 10% val when it has none)."
        ),
    ] = None,
    *,
    credits: CreditChoices,
) -> None:
    """Train a detector (or classifier) on OUT's labels, measure mAP on its val split
    each epoch, and write a model folder that `autolabel label --model DIR` uses."""
    if dtype not in DTYPES:
        usage(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    try:
        settings = TrainSettings(
            base=base,
            out_model=str(out_model),
            epochs=epochs,
            batch_size=batch_size,
            image_size=image_size,
            learning_rate=learning_rate,
            device=device,
            dtype=dtype,  # type: ignore[arg-type]
            split=split,
        )
    except ValidationError as error:
        first = error.errors()[0]
        usage(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    with exit_on(TrainingDataError, code=EXIT_USAGE):
        data = read_training_data(out, split)
    with (
        console.status(f"Reading {shown(base)} ..."),
        exit_on(ModelLoadError, code=EXIT_FAILED),
        exit_on(BaseModelError, TrainingStateError, code=EXIT_USAGE),
    ):
        check_training_fits(settings, data)
    account = _account(out, base, credits)
    from flows.train_detector import train_detector

    out_model.mkdir(parents=True, exist_ok=True)
    with out_lock_or_exit(out_model, "autolabel train"), progress_bar("Training"):
        summary = train_detector(out=out, settings=settings, credits=account)
    raise typer.Exit(_report(summary, account))


def _account(out: str, base: str, credits: CreditChoices):
    from tasks.training.charges import training_account

    with exit_on(LedgerLocationError, code=EXIT_USAGE):
        ledger = resolve_ledger_path(out, credits.credits_ledger)
    rates = CreditRates()
    if credits.credit_rates is not None:
        try:
            rates = CreditRates.from_file(credits.credit_rates)
        except (OSError, ValueError) as error:
            usage(f"--credit-rates {credits.credit_rates}: {error}")
    preflight_or_exit(source=None, out=None, ledger=ledger)
    return training_account(
        out=out,
        base=base,
        ledger_path=ledger,
        rates=rates,
        dataset=credits.dataset,
        max_credits=credits.max_credits,
    )


def _report(summary, account) -> int:
    """Print what the training did; the exit code."""
    plan, history = summary.plan, summary.history
    last = history[-1] if history else {}
    metric = (
        f"val accuracy {_number(last.get('accuracy'))}"
        if plan.task == "classify"
        else f"val mAP@0.5 {_number(last.get('map50'))}, mAP@[.5:.95] "
        f"{_number(last.get('map'))}"
    )
    if plan.finished:
        console.print(
            f"Already trained: {shown(summary.out_model)} ({summary.epochs} epochs; "
            f"{metric}). Nothing trained, nothing charged."
        )
        return 0
    resumed = (
        f", resumed after epoch {plan.epochs_done} from its checkpoint"
        if plan.epochs_done
        else ""
    )
    console.print(
        f"Trained {len(summary.trained_now)} epoch(s){resumed} on "
        f"{plan.train_images} images ({plan.val_images} val): {metric}; "
        f"{format_credits(summary.credits_used)} credits "
        f"({format_credits(account.rates.rate('train'))} per image-epoch)."
    )
    if summary.budget_stop:
        print_error(
            f"stopped before epoch {plan.epochs_done + len(summary.trained_now) + 1}: "
            f"{summary.budget_stop}. The checkpoint is kept: rerun with a larger "
            "--max-credits to continue."
        )
        return EXIT_BUDGET
    console.print(
        f"Model: {shown(summary.out_model)}/ (label with `autolabel label SOURCE "
        f"--model {shown(summary.out_model)}`; metrics in training.json)."
    )
    return 0


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
