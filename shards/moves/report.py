"""How move jobs are shown to operators: one line for people, a dict for --json."""

from typing import Any

from tqdm import tqdm

from core.models import MoveJob

# The phases a move passes through until writers are released, in order.
RUN_PHASES = [
    MoveJob.Phase.CREATED,
    MoveJob.Phase.COPYING,
    MoveJob.Phase.FENCED,
    MoveJob.Phase.VERIFIED,
    MoveJob.Phase.ACTIVATED,
    MoveJob.Phase.SWITCHED,
    MoveJob.Phase.RELEASED,
]


def rows_moved(job: MoveJob) -> int:
    """Rows written on the target by the bulk and remainder copies together."""
    passes = (job.rows_copied or {}).get("bulk", {}), (job.rows_copied or {}).get("remainder", {})
    return sum(sum(counts.values()) for counts in passes)


def job_summary(job: MoveJob) -> dict[str, Any]:
    return {
        "job": job.pk,
        "device": job.device_id,
        "source": job.source_id,
        "target": job.target_id,
        "phase": job.phase,
        "rows_copied": job.rows_copied,
        "rows_moved": rows_moved(job),
        "verification": job.verification,
        "stall_ms": job.stall_ms,
        "rebalance": job.rebalance_id,
        "requested_by": job.requested_by,
        "error": job.error,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "switched_at": job.switched_at.isoformat() if job.switched_at else None,
        "cleanup_after": job.cleanup_after.isoformat() if job.cleanup_after else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def describe_job(job: MoveJob) -> str:
    line = (
        f"move {job.pk}: device {job.device_id} {job.source_id} -> {job.target_id}"
        f" [{job.phase}] {rows_moved(job)} rows"
    )
    if job.stall_ms is not None:
        line += f", writers held {job.stall_ms:.0f} ms"
    if job.verification:
        line += ", verified" if job.verification.get("ok") else ", VERIFICATION FAILED"
    if job.phase == MoveJob.Phase.RELEASED and job.cleanup_after:
        line += f", old rows removed after {job.cleanup_after:%H:%M:%S}"
    if job.error:
        line += f"; {job.error}"
    return line


class PhaseBar:
    """A progress bar over one move's phases (on stderr); silent when disabled."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.bar = tqdm(total=len(RUN_PHASES) - 1, desc=label, unit="phase", disable=not enabled)

    def __call__(self, job: MoveJob) -> None:
        done = RUN_PHASES.index(job.phase) if job.phase in RUN_PHASES else self.bar.total
        self.bar.n = done
        self.bar.set_postfix_str(f"{job.phase}, {rows_moved(job)} rows", refresh=True)

    def close(self) -> None:
        self.bar.close()
