import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from core.credentials import token_digest
from core.models import ProvisioningKey
from core.provisioning import create_provisioning_key


class Command(BaseCommand):
    help = (
        "Manage fleet provisioning keys, with which devices enrol themselves at"
        " POST /api/v1/device/enroll. `create NAME` prints a new key once (only its"
        " digest is stored); `set NAME KEY` stores a key you chose (idempotent);"
        " `revoke NAME` stops a key; `list` shows them."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["create", "set", "revoke", "list"])
        parser.add_argument("name", nargs="?", help="The key's name, e.g. 'factory-2026'.")
        parser.add_argument("key", nargs="?", help="With `set`: the key itself.")
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args, action, name, key, **options):
        if action == "list":
            rows = ProvisioningKey.objects.order_by("name").values(
                "name", "created_at", "revoked_at"
            )
            for row in rows:
                state = "revoked" if row["revoked_at"] else "active"
                self.stdout.write(f"{row['name']}  {state}  created {row['created_at']:%Y-%m-%d}")
            return
        if not name:
            raise CommandError(f"`{action}` needs a key name")
        if action == "create":
            if ProvisioningKey.objects.filter(name=name).exists():
                raise CommandError(f"a provisioning key named {name!r} exists already")
            secret = create_provisioning_key(name)
            if options["json"]:
                self.stdout.write(json.dumps({"name": name, "provisioning_key": secret}))
            else:
                self.stdout.write(f"provisioning key {name}: {secret}")
                self.stdout.write("Store it now; it cannot be shown again.")
        elif action == "set":
            if not key or len(key) < 20:
                raise CommandError("`set` needs the key itself, at least 20 characters long")
            ProvisioningKey.objects.update_or_create(
                name=name, defaults={"digest": token_digest(key), "revoked_at": None}
            )
            self.stdout.write(f"provisioning key {name} set")
        else:
            updated = ProvisioningKey.objects.filter(name=name, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            if not updated:
                raise CommandError(f"no active provisioning key named {name!r}")
            self.stdout.write(f"provisioning key {name} revoked")
