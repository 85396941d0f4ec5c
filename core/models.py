"""Directory models: who exists, which devices there are, and where each one lives.

These tables exist only in the directory database. Shard-side rows refer to a
device by its plain integer id, never by a foreign key.
"""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models


class User(AbstractUser):
    """A web user or admin; a custom model from day one so it can grow."""

    class Meta:
        db_table = "core_user"


class Shard(models.Model):
    """One shard database in the registry, read by every process at run time."""

    class State(models.TextChoices):
        ACTIVE = "active", "active"
        DRAINING = "draining", "draining"
        RETIRED = "retired", "retired"

    alias = models.CharField(
        primary_key=True,
        max_length=63,
        validators=[
            RegexValidator(
                r"^[a-z][a-z0-9_]*$",
                "A shard alias is lower-case letters, digits and underscores.",
            )
        ],
        help_text="Connection alias, e.g. shard_3; never reused.",
    )
    # Goes into every cluster-wide id minted on this shard; never reused.
    number = models.PositiveSmallIntegerField(
        unique=True, validators=[MinValueValidator(1), MaxValueValidator(8191)]
    )
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=5432)
    db_name = models.CharField(max_length=63)
    db_user = models.CharField(max_length=63, blank=True, help_text="Empty: the default user.")
    db_password = models.CharField(
        max_length=255, blank=True, help_text="Empty: the default password from the environment."
    )
    options = models.JSONField(default=dict, blank=True, help_text="Extra libpq options.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    weight = models.PositiveIntegerField(
        default=100, help_text="Relative capacity: twice the weight takes twice the devices."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias"]

    def __str__(self) -> str:
        return f"{self.alias} ({self.state})"


class Device(models.Model):
    """A field device; its readings and commands live on its shard."""

    serial = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=200, blank=True)
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="DeviceAccess",
        related_name="devices",
        blank=True,
        help_text="Web users who may see this device and command it.",
    )
    is_active = models.BooleanField(default=True)
    reenroll_allowed = models.BooleanField(
        default=False,
        help_text="Released by an admin: the next enrolment with this serial gets a new"
        " token and revokes the old ones. Cleared by that enrolment.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or self.serial


class DeviceAccess(models.Model):
    """Grants one user sight of one device, and optionally the right to command it."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    can_command = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "user"], name="unique_device_access")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} -> device {self.device_id}"


class DeviceCredential(models.Model):
    """A device token, stored only as a keyed digest; several may be valid during rotation."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    digest = models.CharField(max_length=64, help_text="HMAC-SHA256 of the token's secret part.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when rotated: the old token's grace period ends."
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"credential {self.pk} of device {self.device_id}"


class Placement(models.Model):
    """The device-to-shard map: the single truth of where a device's rows live."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True)
    shard = models.ForeignKey(Shard, on_delete=models.PROTECT, related_name="placements")
    pinned = models.BooleanField(
        default=False, help_text="Pinned devices stay where they are when shards are rebalanced."
    )
    # Bumped by every move, so caches and fences can tell old placements from new.
    epoch = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"device {self.device_id} on {self.shard_id}"


class ProvisioningKey(models.Model):
    """A fleet key that lets devices enrol themselves; stored only as a digest."""

    name = models.CharField(max_length=100, unique=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name
