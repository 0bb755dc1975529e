"""The review page's work: the preview flow and the approved batch, one at a time.

The page asks; this module runs the real Prefect flows (``flows.preview.preview`` for
test results, ``flows.autolabel.autolabel`` with the approved thresholds for the batch)
in a background thread of the server, so the page stays responsive and polls for
progress. One job at a time per output folder: a second request while one runs is
refused (the page greys its buttons meanwhile).

"Train a model" runs ``flows.train_detector.train_detector`` the same way, on the
labeled batch, into ``OUT/models/<name>`` (``review_ui.training``), charged to the
page's ledger at the ``train`` rate; the finished models are offered as labelers.

The local folders the page may read are limited to ``RunDefaults.allowed_sources``
(``autolabel ui --allow-source``); a request naming another folder is refused before
anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from model_loaders.backends import Task
from model_loaders.model_family import ModelLoadError
from review_ui.queue import queue_thumbnail, read_queue
from review_ui.training import (
    TrainRequest,
    TrainRequestError,
    offered_models,
    plan_training,
    training_result,
)
from tasks import progress, roboflow_source, s3
from tasks.approval import approved_path, whoami
from tasks.credits import (
    CreditAccount,
    CreditRates,
    LedgerLocationError,
    format_credits,
    resolve_ledger_path,
)
from tasks.out_lock import hold_out_lock
from tasks.preview import (
    DEFAULT_SAMPLE_SIZE,
    PreviewError,
    PreviewLayout,
    load_record,
)
from tasks.preview_truth import truth_curves_payload
from tasks.review import estimate_credits, review_payload
from tasks.s3_lock import hold_output_lock
from tasks.settings import (
    LabelSettings,
    SettingsError,
    build_settings,
    credit_account,
    labeled_dataset,
    with_every_threshold,
)
from tasks.sources import SourceOptions
from tasks.thresholds import Thresholds
from tasks.training.base import BaseModelError
from tasks.training.charges import training_account
from tasks.training.data import TrainingDataError
from tasks.training.state import TrainingStateError

JobKind = Literal["preview", "label", "train"]
APPROVED_VIA = "review page"


class RequestError(ValueError):
    """A request the page must correct (bad classes, unknown preview, busy)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ClassRow(BaseModel):
    """One class as the page edits it: a name and its descriptions ('a; b')."""

    name: str
    descriptions: str = ""

    def as_option(self) -> str:
        """The row as a ``--class`` option: "name" or "name: a; b"."""
        descriptions = self.descriptions.strip()
        return f"{self.name}: {descriptions}" if descriptions else self.name


class PreviewRequest(BaseModel):
    """'Generate test results': what to sample and how to label it."""

    source: str = Field(min_length=1)
    classes: list[ClassRow] = Field(min_length=1)
    task: Task = "detect"
    model: str | None = None
    sample_size: int = Field(DEFAULT_SAMPLE_SIZE, ge=1, le=64)
    seed: int = 0
    thresholds: dict[str, float] = Field(default_factory=dict)


class LabelRequest(BaseModel):
    """'Auto label with these settings', confirmed: the approved thresholds."""

    key: str = Field(description="The preview the thresholds were chosen on.")
    thresholds: dict[str, float]


@dataclasses.dataclass
class RunDefaults:
    """How the server runs models and charges: from ``autolabel ui``'s options."""

    device: str = "auto"
    batch_size: int = 8
    # Per task, ModelSpec fields from the command line (--sam-checkpoint, ...).
    model_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    chunk_size: int = 128
    sources: SourceOptions = dataclasses.field(default_factory=SourceOptions)
    rates: CreditRates = dataclasses.field(default_factory=CreditRates)
    ledger: str | Path | None = None
    dataset: str | None = None
    max_credits: float | None = None
    # Folders (resolved) whose contents the page may use as a source; None: any.
    # s3:// and roboflow:// sources are not folders and are not limited by it.
    allowed_sources: tuple[Path, ...] | None = None

    def check_source(self, source: str) -> None:
        """Refuse (HTTP 400) a local folder outside ``allowed_sources``, after
        resolving symlinks and '..' as the flow reading it would."""
        if self.allowed_sources is None:
            return
        if s3.is_s3(source) or roboflow_source.is_roboflow(source):
            return
        folder = Path(source).expanduser().resolve()
        roots = [Path(root).expanduser().resolve() for root in self.allowed_sources]
        if any(folder.is_relative_to(root) for root in roots):
            return
        allowed = ", ".join(str(root) for root in roots) or "none"
        raise RequestError(
            f"{folder} is outside the folders this page may read ({allowed}): "
            f"restart `autolabel ui` with --allow-source {folder} to allow it"
        )


@dataclasses.dataclass
class Job:
    """One background run, as the page polls it."""

    kind: JobKind
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: Literal["running", "done", "failed"] = "running"
    started_at: str = dataclasses.field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat()
    )
    done: int = 0
    total: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    def expect(self, total: int) -> None:  # tasks.progress listener
        self.total = (self.total or 0) + total

    def advance(self, done: int) -> None:
        self.done += done

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ReviewSession:
    """The server side of the page for one output folder."""

    def __init__(self, out: str | Path, defaults: RunDefaults | None = None) -> None:
        # An s3:// output: the page works in its local staging folder (where the flows
        # write before uploading), and the batch's outputs go to the bucket.
        self.destination = str(out)
        self.out = s3.local_folder(out)
        self.defaults = defaults or RunDefaults()
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._estimates: dict[str, dict[str, Any]] = {}
        self._payload: dict[str, Any] | None = None
        self._payload_stamp: tuple[int, ...] | None = None

    # --- what the page reads ---------------------------------------------------

    def job(self) -> Job | None:
        return self._job

    def preview(self) -> dict[str, Any] | None:
        """The stored preview with its credit estimate; None before the first one.

        Built once per stored preview (it decodes masks and compares every pair of
        candidates). While a job runs, the preview files may be half rewritten, so the
        last payload built is returned instead.
        """
        if not self._running():
            try:
                stamp = self._preview_stamp()
                if self._payload is None or self._payload_stamp != stamp:
                    self._payload = review_payload(str(self.out))
                    self._payload["truth"] = truth_curves_payload(str(self.out))
                    self._payload_stamp = stamp
            except PreviewError:
                self._payload = None
        if self._payload is None:
            return None
        return {**self._payload, "estimate": self.estimate(self._payload["key"])}

    def queue(self) -> list[dict[str, Any]]:
        """The batch's review queue (``OUT/review/queue.csv``), first rows only;
        empty before a batch wrote one."""
        return read_queue(self.out)

    def queue_thumbnail(self, rank: int) -> Path | None:
        """The drawn thumbnail of the queue's row ``rank``, if one was drawn."""
        return queue_thumbnail(self.out, rank)

    def models(self) -> list[dict[str, Any]]:
        """The trained models under ``OUT/models`` the page offers as labelers."""
        return offered_models(self.out)

    def can_train(self) -> bool:
        """Whether a batch was approved and labeled here (what training learns)."""
        return approved_path(self.out).is_file()

    def estimate(self, key: str) -> dict[str, Any]:
        """What labeling the preview's whole source would cost (cached per preview);
        ``{"error": reason}`` when the source cannot be listed now."""
        if key not in self._estimates:
            try:
                record = load_record(self.out)
                estimate = estimate_credits(record, str(self.out), self.defaults.rates)
                self._estimates[key] = dataclasses.asdict(estimate)
            except Exception as error:  # a moved folder, an unreachable bucket
                return {"error": f"cannot count the source's images: {error}"}
        return self._estimates[key]

    def _running(self) -> bool:
        return self._job is not None and self._job.state == "running"

    def _preview_stamp(self) -> tuple[int, ...]:
        layout = PreviewLayout(self.out)
        truth = layout.root / "truth.parquet"
        try:
            return tuple(
                path.stat().st_mtime_ns
                for path in (layout.record, layout.candidates, layout.manifest)
            ) + ((truth.stat().st_mtime_ns,) if truth.exists() else ())
        except FileNotFoundError:
            raise PreviewError(f"no preview in {layout.root}") from None

    # --- what the page asks for ------------------------------------------------

    def start_preview(self, request: PreviewRequest) -> Job:
        """Run the preview flow on a sample (free); its candidates come back once."""
        self.defaults.check_source(request.source)
        settings = self._settings(request)
        from flows.preview import preview

        def run() -> dict[str, Any]:
            summary = preview(
                source=request.source,
                out=str(self.out),
                settings=settings,
                sample_size=request.sample_size,
                seed=request.seed,
                sources=self.defaults.sources,
            )
            return {"counts": summary.counts, "credits": summary.credits}

        return self._start("preview", run)

    def start_labeling(self, request: LabelRequest) -> Job:
        """Approve the thresholds and label the whole source with them.

        Runs the ``autolabel`` flow with the approval given: its test-results step is
        answered from the preview's cache (no second model run for them),
        ``approved.json`` records who approved what, and the batch (every image, the
        sample's too) is labeled and charged to the ledger.
        """
        try:
            record = load_record(self.out)
        except PreviewError as error:
            raise RequestError(str(error), 409) from None
        if request.key != record.key:
            raise RequestError(
                "the test results changed since this page loaded them: reload", 409
            )
        with _request_error():
            settings = with_every_threshold(record.settings, request.thresholds)
        account = self._account(record.source, settings)
        from flows.autolabel import autolabel

        def run() -> dict[str, Any]:
            summary = autolabel(
                source=record.source,
                out=self.destination,
                settings=settings,
                images=list(record.sample),
                approve=True,
                approved_by=whoami(APPROVED_VIA),
                credits=account,
                sources=record.sources,
            )
            report = self.out / "report.md"
            result = dataclasses.asdict(summary)
            result["credits_text"] = format_credits(summary.credits_used or 0.0)
            result["report"] = (
                report.read_text(encoding="utf-8") if report.is_file() else ""
            )
            return result

        return self._start("label", run)

    def start_training(self, request: TrainRequest) -> Job:
        """Train a model on the labeled batch into ``OUT/models/<name>``.

        Refused before anything loads: no labeled batch yet (409), another job
        running (409), or what ``autolabel train`` refuses (400: no base, a base of
        the wrong kind, labels it cannot train on, a folder holding something else).
        """
        if not self.can_train():
            raise RequestError(
                f"no labeled batch in {self.out} yet: generate test results, approve "
                "them and label the batch first",
                409,
            )
        self._refuse_if_busy()  # before reading labels a batch may be rewriting
        with _request_error():
            settings = plan_training(self.out, request, device=self.defaults.device)
            account = training_account(
                out=self.out,
                base=settings.base,
                ledger_path=resolve_ledger_path(self.out, self.defaults.ledger),
                rates=self.defaults.rates,
                dataset=self.defaults.dataset,
                max_credits=self.defaults.max_credits,
            )
        from flows.train_detector import train_detector

        def run() -> dict[str, Any]:
            folder = Path(settings.out_model)
            folder.mkdir(parents=True, exist_ok=True)
            # The model folder too, as `autolabel train` holds it.
            with hold_out_lock(folder, "autolabel ui (train)"):
                summary = train_detector(
                    out=str(self.out), settings=settings, credits=account
                )
            return training_result(summary)

        return self._start("train", run)

    # --- helpers -------------------------------------------------------------

    def _settings(self, request: PreviewRequest) -> LabelSettings:
        """The form's choices as settings; a bad choice is the page's to correct."""
        model = {
            "task": request.task,
            "model": request.model or None,
            "dataset": labeled_dataset(self.defaults.dataset, request.source),
            "device": self.defaults.device,
            "batch_size": self.defaults.batch_size,
            **self.defaults.model_options.get(request.task, {}),
        }
        names = {row.name for row in request.classes}
        with _request_error():
            return build_settings(
                classes=[row.as_option() for row in request.classes],
                thresholds=Thresholds(
                    per_class={
                        k: v for k, v in request.thresholds.items() if k in names
                    }
                ),
                chunk_size=self.defaults.chunk_size,
                model=model,
            )

    def _account(self, source: str, settings: LabelSettings) -> CreditAccount:
        return credit_account(
            out=self.out,
            source=source,
            settings=settings,
            ledger=self.defaults.ledger,
            rates=self.defaults.rates,
            dataset=self.defaults.dataset,
            max_credits=self.defaults.max_credits,
        )

    def _start(self, kind: JobKind, run: Callable[[], dict[str, Any]]) -> Job:
        with self._lock:
            self._refuse_if_busy()
            self.preview()  # what the page shows while the job rewrites the files
            job = Job(kind=kind)
            self._job = job
        threading.Thread(
            target=self._run, args=(job, run), name=f"review-{kind}", daemon=True
        ).start()
        return job

    def _refuse_if_busy(self) -> None:
        if self._running():
            raise RequestError(
                f"a {self._job.kind} run is still going: wait for it", 409
            )

    def _run(self, job: Job, run: Callable[[], dict[str, Any]]) -> None:
        progress.add_listener(job)
        try:
            # One run per output (and s3:// prefix), as on the command line.
            with hold_output_lock(
                self.destination,
                f"autolabel ui ({job.kind})",
                self.defaults.sources.s3_endpoint_url,
            ):
                job.result = run()
            job.state = "done"
        except Exception as error:  # shown on the page; the server keeps serving
            job.error = f"{type(error).__name__}: {error}"
            job.state = "failed"
            traceback.print_exc()
        finally:
            progress.remove_listener(job)


@contextlib.contextmanager
def _request_error() -> Iterator[None]:
    """A choice the settings refuse is a request the page must correct (HTTP 400)."""
    try:
        yield
    except (
        SettingsError,
        ValidationError,
        ModelLoadError,
        TrainRequestError,
        TrainingDataError,
        BaseModelError,
        TrainingStateError,
        LedgerLocationError,
    ) as error:
        raise RequestError(str(error)) from None
