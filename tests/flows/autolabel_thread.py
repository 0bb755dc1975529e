"""The autolabel flow run in a background thread (as ``autolabel run`` does), so that a
test can play the person: wait until the run is PAUSED for approval, then resume it.

A helper module, not a test module.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.flow_runs import resume_flow_run

from flows.autolabel import autolabel
from tasks import approval
from tasks.approval import ApprovalRequest


def flow_run_state(run_id: UUID):
    """The flow run's state as the Prefect server has it now."""
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


class AutolabelThread:
    """An autolabel flow run started in a thread, and the approval requests it sent."""

    def __init__(self, **parameters: Any) -> None:
        self.requests: queue.Queue[ApprovalRequest] = queue.Queue()
        self.state = None
        approval.add_waiting_listener(self)
        context = contextvars.copy_context()  # the harness's settings, in the thread
        self.thread = threading.Thread(
            target=context.run, args=(self._run, parameters), daemon=True
        )
        self.thread.start()

    def waiting(self, request: ApprovalRequest) -> None:
        self.requests.put(request)

    def _run(self, parameters: dict) -> None:
        try:
            self.state = autolabel(**parameters, return_state=True)
        finally:
            approval.remove_waiting_listener(self)

    def next_pause(self, timeout: float = 120) -> UUID:
        """Wait for the next approval request and for the run to be PAUSED."""
        request = self.requests.get(timeout=timeout)
        run_id = UUID(request.flow_run_id)
        wait_until(lambda: flow_run_state(run_id).is_paused(), timeout)
        return run_id

    def finish(self, timeout: float = 120):
        """Wait for the flow to end; its final state."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not finish"
        return self.state

    def approve(
        self,
        run_id: UUID,
        thresholds: dict[str, float],
        approved_by: str,
        timeout: float = 120,
    ):
        """Approve the paused run with ``thresholds`` as a person would (the Prefect
        UI's form); wait for the flow to end and return its final state."""
        resume_flow_run(
            run_id,
            run_input={**thresholds, "decision": "approve", "approved_by": approved_by},
        )
        return self.finish(timeout)
