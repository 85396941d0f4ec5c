"""Rebalance runs on a Celery worker: queued by `rebalance --background`, run by the task.

The command plans and records the run as 'queued' (so `--status` and `--stop`
know it at once) and queues shards.tasks.rebalance_run. The task claims it
under the one-runner lock; if it finds the run interrupted instead (its worker
was killed and the broker delivered the task again) it resumes it, as
`rebalance --resume` would. A run someone else started, finished or stopped is
left alone.
"""

from core.models import Rebalance
from shards.rebalance.locks import ACTIVE_STATES, exclusive_runner, lock_holder
from shards.rebalance.runner import finish_interrupted_moves, resume_run, start_queued

State = Rebalance.State


def run_queued(run_id: int) -> str:
    """Start (or continue) a queued run here; its state at the end, or why nothing was done.

    Raises RebalanceBusy while another process holds the one-runner lock.
    """
    run = Rebalance.objects.filter(pk=run_id).first()
    if run is None:
        return "missing"
    with exclusive_runner() as lock:
        run.refresh_from_db()
        if run.state == State.QUEUED:
            start_queued(run, lock)
        elif run.state in ACTIVE_STATES and lock_holder(run.pk) is None:
            finish_interrupted_moves()
            resume_run(run, lock)
    run.refresh_from_db()
    return run.state


def is_queued(run_id: int) -> bool:
    return Rebalance.objects.filter(pk=run_id, state=State.QUEUED).exists()
