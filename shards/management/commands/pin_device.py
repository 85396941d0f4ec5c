import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.devices import find_device
from core.models import Device, MoveJob, Placement, Shard
from shards.moves.protocol import MoveError, move_device
from shards.moves.report import PhaseBar, describe_job, job_summary
from shards.rebalance.cli import OpsCommand, command_errors

EXAMPLES = """\
examples:
  manage.py pin_device SN-0042                      # keep it where it is
  manage.py pin_device SN-0042 --shard shard_3      # move it there first, then pin it
  manage.py pin_device SN-0042 --shard shard_3 --dedicate   # shard_3 for SN-0042 alone
  manage.py pin_device SN-0042 --unpin              # rebalance may move it again
"""


class Command(OpsCommand):
    examples = EXAMPLES
    help = """\
Pin a device so that rebalancing leaves it on its shard (drain_shard refuses to
drain a shard with pinned devices unless told --include-pinned). With --shard it
is moved there first, online as with move_device, if it is elsewhere; it is
pinned before the move starts, so a rebalance cannot take it away meanwhile (if
the move fails, its pin is put back as it was).

--dedicate gives the device its shard to itself: the shard's weight is set to 0,
so no new device is placed there and no rebalance moves one in, and the next
`rebalance` moves the shard's other, unpinned devices off it. Other pinned
devices stay. Give the shard a weight again (add_shard ... --weight N) to end it.

--unpin clears the pin; it does not change any shard's weight.
The device is given by serial or by id."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device", help="Serial or id of the device.")
        parser.add_argument(
            "--shard", metavar="ALIAS", help="Move the device to this active shard first."
        )
        parser.add_argument(
            "--dedicate",
            action="store_true",
            help="Set the device's shard's weight to 0: it keeps this device (and other"
            " pinned ones); the next rebalance moves the rest off.",
        )
        parser.add_argument("--unpin", action="store_true", help="Clear the pin instead.")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print only JSON on stdout: {device, serial, shard, pinned, move, dedicated,"
            " weight, others_to_move, others_pinned}.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.as_json = options["json"]
        if options["unpin"] and (options["shard"] or options["dedicate"]):
            raise CommandError("--unpin takes no --shard or --dedicate")
        with command_errors():
            device = find_device(options["device"])
            if options["unpin"]:
                self.set_pin(device, False)
                result = self.result(device, None, dedicated=False)
            else:
                job = self.pin(device, options["shard"])
                if options["dedicate"]:
                    self.dedicate(device)
                result = self.result(device, job, dedicated=options["dedicate"])
        self.report(result)

    def set_pin(self, device: Device, pinned: bool) -> None:
        Placement.objects.filter(device=device).update(pinned=pinned)

    def pin(self, device: Device, shard: str | None) -> MoveJob | None:
        """Pin (first, so no rebalance takes it meanwhile), then move if it is elsewhere."""
        placement = Placement.objects.get(device=device)
        was_pinned = placement.pinned
        self.set_pin(device, True)
        if shard is None or placement.shard_id == shard:
            return None
        bar = PhaseBar(f"device {device.serial} -> {shard}", enabled=not self.as_json)
        try:
            return move_device(device.pk, shard, requested_by="pin_device", on_phase=bar)
        except MoveError:
            self.set_pin(device, was_pinned)
            raise
        finally:
            bar.close()

    def dedicate(self, device: Device) -> None:
        alias = Placement.objects.get(device=device).shard_id
        Shard.objects.filter(alias=alias).update(weight=0)

    def result(self, device: Device, job: MoveJob | None, *, dedicated: bool) -> dict[str, Any]:
        placement = Placement.objects.select_related("shard").get(device=device)
        others = Placement.objects.filter(shard_id=placement.shard_id).exclude(device=device)
        return {
            "device": device.pk,
            "serial": device.serial,
            "shard": placement.shard_id,
            "pinned": placement.pinned,
            "move": job_summary(job) if job else None,
            "dedicated": dedicated,
            "weight": placement.shard.weight,
            "others_to_move": others.filter(pinned=False).count() if dedicated else None,
            "others_pinned": others.filter(pinned=True).count() if dedicated else None,
        }

    def report(self, result: dict[str, Any]) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(result, indent=2))
            return
        if result["move"]:
            job = MoveJob.objects.get(pk=result["move"]["job"])
            self.stdout.write(describe_job(job))
        state = "pinned" if result["pinned"] else "no longer pinned"
        self.stdout.write(
            f"device {result['serial']} ({result['device']}) {state} on {result['shard']}"
        )
        if result["dedicated"]:
            self.stdout.write(
                f"{result['shard']} is dedicated to it: weight 0, so no new or rebalanced"
                f" devices go there; the next `rebalance` moves its {result['others_to_move']}"
                f" other unpinned devices off ({result['others_pinned']} other pinned stay)"
            )
        elif not result["pinned"] and result["weight"] == 0:
            self.stdout.write(
                f"note: {result['shard']} still has weight 0 (dedicated); give it a weight"
                " again with add_shard ... --weight N"
            )
