import json
import secrets

from django.core.management.base import BaseCommand

from core.devices import create_device
from core.models import Device, Placement, User

DEMO_DEVICE_COUNT = 6


class Command(BaseCommand):
    help = (
        "Create the local cluster's demo data, idempotently: a superuser 'admin', a web"
        " user 'demo' and demo devices (demo-0001...) spread over the active shards and"
        " visible to 'demo'. Prints credentials; device tokens only on the run that"
        " creates the device."
    )

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", help="Default: a new random password.")
        parser.add_argument("--user-password", help="Default: a new random password.")
        parser.add_argument("--devices", type=int, default=DEMO_DEVICE_COUNT)
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def _user(self, username: str, password: str | None, staff: bool) -> str:
        password = password or secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = staff
        user.email = f"{username}@example.invalid"
        user.set_password(password)
        user.save()
        return password

    def handle(self, *args, **options):
        admin_password = self._user("admin", options["admin_password"], staff=True)
        user_password = self._user("demo", options["user_password"], staff=False)
        demo = User.objects.get(username="demo")
        devices = []
        for n in range(1, options["devices"] + 1):
            serial = f"demo-{n:04d}"
            device = Device.objects.filter(serial=serial).first()
            if device is None:
                new = create_device(serial, name=f"Demo device {n}", users=[demo])
                devices.append(
                    {
                        "device_id": new.device.pk,
                        "serial": serial,
                        "shard": new.shard,
                        "token": new.token,
                    }
                )
            else:
                shard = Placement.objects.get(device=device).shard_id
                devices.append(
                    {"device_id": device.pk, "serial": serial, "shard": shard, "token": None}
                )
        result = {
            "admin_user": "admin",
            "admin_password": admin_password,
            "web_user": "demo",
            "web_password": user_password,
            "devices": devices,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"admin / {admin_password}    web user: demo / {user_password}")
        for d in devices:
            token = d["token"] or "(token shown when it was created)"
            self.stdout.write(f"  {d['serial']}  id {d['device_id']}  on {d['shard']}  {token}")
