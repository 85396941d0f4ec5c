import json

from django.core.management.base import BaseCommand, CommandError

from core.devices import find_device
from core.models import Device, MoveJob
from shards.moves.cleanup import clean_up_due_moves
from shards.moves.protocol import MoveError, move_device, rollback_move
from shards.moves.report import PhaseBar, describe_job, job_summary
from shards.rebalance.observer import Observer
from shards.rebalance.runner import finish_interrupted_moves


class ResumeBars(Observer):
    """A phase bar per resumed job; a job that fails is reported and the rest go on."""

    def __init__(self, command: "Command") -> None:
        self.command = command
        self.bar: PhaseBar | None = None

    def job_resuming(self, job: MoveJob) -> PhaseBar:
        self.bar = PhaseBar(f"resume move {job.pk}", enabled=not self.command.as_json)
        return self.bar

    def job_resumed(self, job: MoveJob, error: str) -> None:
        if self.bar is not None:
            self.bar.close()
        if error:
            self.command.stderr.write(f"move {job.pk}: {error}")


class Command(BaseCommand):
    help = (
        "Move one device to another shard while it keeps reporting. The device's rows are"
        " copied in bulk while writes go on; then its old shard holds new writes for a"
        " moment (the fence), the rest is copied, every table's row count and checksum is"
        " compared (a mismatch rolls the move back and names the differing rows), the new"
        " shard takes over and the directory is switched. Writers held by the fence retry"
        " on the new shard; ids do not change. The old rows are removed by a background"
        " task after MOVE_CLEANUP_GRACE_SECONDS. Every step is recorded as a move job: if"
        " the mover dies, `move_device --resume` finishes the job, and `move_device"
        " --rollback JOB` undoes one that has not switched the directory yet."
        " Examples: manage.py move_device SN-0001 shard_3;"
        " manage.py move_device --resume; manage.py move_device --list"
    )

    def add_arguments(self, parser):
        parser.add_argument("device", nargs="?", help="Serial or id of the device to move.")
        parser.add_argument("shard", nargs="?", help="Alias of the active shard to move it to.")
        parser.add_argument(
            "--resume", action="store_true", help="Finish every interrupted move job."
        )
        parser.add_argument(
            "--rollback", type=int, metavar="JOB", help="Undo a job that has not switched."
        )
        parser.add_argument("--list", action="store_true", help="Show the latest move jobs.")
        parser.add_argument(
            "--cleanup",
            action="store_true",
            help="Remove old rows of moves whose grace period is over now (a beat task does"
            " this every minute).",
        )
        parser.add_argument("--json", action="store_true", help="Print JSON on stdout only.")

    def handle(self, *args, **options):
        self.as_json = options["json"]
        chosen = [
            options["resume"],
            options["rollback"] is not None,
            options["list"],
            options["cleanup"],
        ]
        if sum(chosen) > 1 or (any(chosen) and options["device"]):
            raise CommandError(
                "give DEVICE SHARD, or one of --resume, --rollback, --list, --cleanup"
            )
        try:
            if options["resume"]:
                jobs = self.resume()
            elif options["rollback"] is not None:
                jobs = [self.rollback(options["rollback"])]
            elif options["list"]:
                jobs = list(MoveJob.objects.order_by("-id")[:20])
            elif options["cleanup"]:
                jobs = clean_up_due_moves()
            else:
                if not options["device"] or not options["shard"]:
                    raise CommandError("give the device and the shard to move it to")
                jobs = [self.move(options["device"], options["shard"])]
        except (MoveError, Device.DoesNotExist) as exc:
            raise CommandError(str(exc)) from exc
        self.report(jobs)
        if options["resume"]:
            left = [job for job in jobs if job.phase in MoveJob.IN_FLIGHT]
            if left:  # a shard still away, say: the operator (or a script) tries again
                ids = ", ".join(str(job.pk) for job in left)
                raise CommandError(
                    f"move job(s) {ids} still interrupted; run `move_device --resume` again"
                    " once every shard answers"
                )

    def move(self, ref: str, shard: str) -> MoveJob:
        device = find_device(ref)
        bar = PhaseBar(f"device {device.serial} -> {shard}", enabled=not self.as_json)
        try:
            return move_device(device.pk, shard, requested_by="move_device", on_phase=bar)
        finally:
            bar.close()

    def resume(self) -> list[MoveJob]:
        jobs = finish_interrupted_moves(ResumeBars(self))
        if not jobs and not self.as_json:
            self.stderr.write("no interrupted move jobs")
        return jobs

    def rollback(self, job_id: int) -> MoveJob:
        job = MoveJob.objects.filter(pk=job_id).first()
        if job is None:
            raise CommandError(f"no move job {job_id}")
        return rollback_move(job)

    def report(self, jobs: list[MoveJob]) -> None:
        if self.as_json:
            self.stdout.write(json.dumps([job_summary(job) for job in jobs], indent=2))
            return
        for job in jobs:
            self.stdout.write(describe_job(job))
