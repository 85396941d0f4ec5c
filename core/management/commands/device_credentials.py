from django.core.management.base import BaseCommand, CommandError

from core.credentials import revoke_tokens, rotate_token
from core.models import Device


class Command(BaseCommand):
    help = (
        "Manage one device's credentials. `rotate SERIAL` prints a new token; the old one"
        " keeps working for TOKEN_ROTATION_GRACE_HOURS (default 24). `revoke SERIAL`"
        " stops every token of the device at once (other nodes within"
        " CREDENTIAL_LOCAL_TTL seconds). `release SERIAL` lets the device enrol again"
        " with the fleet key (its old tokens are revoked when it does)."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["rotate", "revoke", "release"])
        parser.add_argument("serial")

    def handle(self, *args, action, serial, **options):
        device = Device.objects.filter(serial=serial).first()
        if device is None:
            raise CommandError(f"no device with serial {serial!r}")
        if action == "rotate":
            self.stdout.write(f"new token: {rotate_token(device)}")
            self.stdout.write("Store it now; it cannot be shown again.")
        elif action == "revoke":
            self.stdout.write(f"revoked {revoke_tokens(device)} token(s) of {serial}")
        else:
            device.reenroll_allowed = True
            device.save(update_fields=["reenroll_allowed"])
            self.stdout.write(f"{serial} may enrol again with the fleet's provisioning key")
