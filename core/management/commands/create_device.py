import json

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from core.devices import create_device
from core.models import Device, User
from routers.errors import RoutingError


class Command(BaseCommand):
    help = (
        "Create a device and print its token. The token is shown this once: only a"
        " digest is stored. The device goes to the least-loaded active shard (by weight)"
        " unless --shard names one; --pin keeps it there when shards are rebalanced."
        " Example: manage.py create_device SN-0042 --name 'Pump 42' --user alice"
    )

    def add_arguments(self, parser):
        parser.add_argument("serial", help="The device's unique serial number.")
        parser.add_argument("--name", default="", help="A human name for the device.")
        parser.add_argument(
            "--user",
            action="append",
            dest="users",
            default=[],
            help="Username who may see and command it (repeatable).",
        )
        parser.add_argument("--shard", help="Place it on this shard alias.")
        parser.add_argument("--pin", action="store_true", help="Pin it to its shard.")
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args, **options):
        serial = options["serial"].strip()
        if not serial:
            raise CommandError("the serial must not be empty")
        if Device.objects.filter(serial=serial).exists():
            raise CommandError(f"a device with serial {serial!r} already exists")
        users = list(User.objects.filter(username__in=options["users"]))
        missing = sorted(set(options["users"]) - {u.username for u in users})
        if missing:
            raise CommandError(f"no such user(s): {', '.join(missing)}")
        if options["pin"] and not options["shard"]:
            raise CommandError("--pin needs --shard: say which shard to pin the device to")
        try:
            new = create_device(
                serial,
                name=options["name"],
                users=users,
                shard=options["shard"],
                pin=options["pin"],
            )
        except RoutingError as exc:
            raise CommandError(str(exc)) from exc
        except IntegrityError as exc:
            raise CommandError(f"could not create {serial!r}: {exc}") from exc
        result = {
            "device_id": new.device.pk,
            "serial": serial,
            "shard": new.shard,
            "token": new.token,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"device {new.device.pk} ({serial}) placed on {new.shard}")
        self.stdout.write(f"token: {new.token}")
        self.stdout.write("Store the token now; it cannot be shown again.")
