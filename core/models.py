"""Directory models: who exists, which devices there are, and where each one lives.

These tables exist only in the directory database. Shard-side rows refer to a
device by its plain integer id, never by a foreign key.
"""

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction

from core.credential_cache import forget_after_commit


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


class DeviceQuerySet(models.QuerySet):
    """A bulk update of devices (say, deactivating them) bites on every node at once."""

    def update(self, **kwargs: Any) -> int:
        with transaction.atomic(using=self.db, savepoint=False):
            key_ids = list(
                DeviceCredential.objects.using(self.db)
                .filter(device__in=self.values("pk"))
                .values_list("key_id", flat=True)
            )
            count = super().update(**kwargs)
            forget_after_commit(key_ids, using=self.db)
        return count


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
    report_interval_s = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="report interval (seconds)",
        help_text="How often the device is expected to report; silent for longer, it is"
        " offline and an alert is raised. Empty: DEVICE_REPORT_INTERVAL.",
    )
    raw_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="raw retention (days)",
        help_text="Raw readings older than this are deleted (rollups are kept). Empty: keep.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        permissions = [
            ("command_device", "Can send and cancel commands on any device"),
        ]

    def __str__(self) -> str:
        return self.name or self.serial

    @property
    def expected_report_interval(self) -> int:
        """Seconds of silence after which the device counts as offline."""
        return self.report_interval_s or settings.DEVICE_REPORT_INTERVAL


class AlertRule(models.Model):
    """One anomaly rule for one device and metric, checked on every new minute bucket.

    Lives in the directory with the device it configures; the alerts it raises
    live on the device's shard under the condition key "<kind>:<metric>".
    """

    class Kind(models.TextChoices):
        MIN = "min", "below a minimum"
        MAX = "max", "above a maximum"
        ZSCORE = "zscore", "far from the trailing mean (z-score)"

    class Severity(models.TextChoices):
        # The same values as the shard's Alert.Severity (core does not import shard models).
        INFO = "info", "info"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="alert_rules")
    metric = models.CharField(max_length=64)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    threshold = models.FloatField(
        help_text="min/max: the bound; zscore: how many standard deviations count as anomalous."
    )
    window_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1)],
        help_text="zscore only: the trailing window the mean and deviation come from.",
    )
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["device", "metric", "kind"]
        constraints = [
            # One rule per condition key, so its alert is never shared by two rules.
            models.UniqueConstraint(
                fields=["device", "metric", "kind"], name="one_alert_rule_per_condition"
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="zscore") | models.Q(threshold__gt=0),
                name="zscore_threshold_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.condition} of device {self.device_id}"

    @property
    def condition(self) -> str:
        """The alert condition key this rule raises and clears."""
        return f"{self.kind}:{self.metric}"


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


class DeviceCredentialQuerySet(models.QuerySet):
    """Bulk changes of credentials (revoking, expiring) bite on every node at once."""

    def update(self, **kwargs: Any) -> int:
        with transaction.atomic(using=self.db, savepoint=False):
            key_ids = list(self.values_list("key_id", flat=True))
            count = super().update(**kwargs)
            forget_after_commit(key_ids, using=self.db)
        return count

    def bulk_create(self, objs: Iterable["DeviceCredential"], *args: Any, **kwargs: Any):
        created = super().bulk_create(objs, *args, **kwargs)
        forget_after_commit([credential.key_id for credential in created], using=self.db)
        return created


class DeviceCredential(models.Model):
    """A device token, stored only as a keyed digest; several may be valid during rotation."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    key_id = models.CharField(
        max_length=32,
        unique=True,
        help_text="The token's public part before the dot: random, so it cannot be guessed.",
    )
    digest = models.CharField(max_length=64, help_text="HMAC-SHA256 of the token's secret part.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when rotated: the old token's grace period ends."
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceCredentialQuerySet.as_manager()

    def __str__(self) -> str:
        return f"credential {self.key_id} of device {self.device_id}"


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


class Rebalance(models.Model):
    """One rebalance run: its plan, and whether it is running, stopped or finished."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued for a Celery worker"
        RUNNING = "running", "running"
        STOPPING = "stopping", "stop requested"
        STOPPED = "stopped", "stopped"
        FINISHED = "finished", "finished"
        FAILED = "failed", "failed"

    class Cost(models.TextChoices):
        DEVICES = "devices", "devices"
        ROWS = "rows", "rows"
        BYTES = "bytes", "bytes"

    kind = models.CharField(
        max_length=80, default="rebalance", help_text="rebalance, or drain:<alias> for a drain."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    cost = models.CharField(max_length=16, choices=Cost.choices, default=Cost.ROWS)
    plan = models.JSONField(default=list, help_text="The planned moves, in order.")
    loads_before = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text="How the moves are made: moves at once, per-shard limits, throttle.",
    )
    held = models.TextField(
        blank=True, help_text="Why the throttle starts no new move right now; empty when none."
    )
    held_since = models.DateTimeField(null=True, blank=True)
    held_seconds = models.FloatField(default=0.0, help_text="Time the throttle held new moves.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.pk} ({self.state})"


def protect_moves_in_flight(collector: Any, field: Any, sub_objs: Any, using: str) -> None:
    """on_delete of a move's device: its finished moves go with it, one in flight stops it.

    A device whose move is copying or switching cannot be deleted: the mover would
    leave rows behind on the target. Finish the move or roll it back first. The
    admin shows such a move as a protected object instead of deleting.
    """
    in_flight = [job for job in sub_objs if job.phase in MoveJob.IN_FLIGHT]
    if in_flight:
        raise models.ProtectedError(
            "a device with a move in flight cannot be deleted; finish or roll back the move"
            f" first (move {', '.join(str(job.pk) for job in in_flight)})",
            in_flight,
        )
    models.CASCADE(collector, field, sub_objs, using)


class MoveJob(models.Model):
    """One device's move between shards, recorded phase by phase so a crash can be resumed.

    Phases run in this order; each is recorded once its effects are durable:
    created -> copying -> fenced -> verified -> activated -> switched -> released
    -> done (source rows removed). Before `switched` a job can be rolled back;
    from `switched` on it can only go forward.
    """

    class Phase(models.TextChoices):
        CREATED = "created", "created"
        COPYING = "copying", "bulk copy"
        FENCED = "fenced", "source fenced"
        VERIFIED = "verified", "verified"
        ACTIVATED = "activated", "target active"
        SWITCHED = "switched", "directory switched"
        RELEASED = "released", "writers released (source rows await cleanup)"
        DONE = "done", "done"
        ROLLED_BACK = "rolled_back", "rolled back"
        FAILED = "failed", "failed (rolled back)"

    device = models.ForeignKey(Device, on_delete=protect_moves_in_flight, related_name="moves")
    source = models.ForeignKey(Shard, on_delete=models.PROTECT, related_name="moves_out")
    target = models.ForeignKey(Shard, on_delete=models.PROTECT, related_name="moves_in")
    rebalance = models.ForeignKey(
        Rebalance, on_delete=models.SET_NULL, null=True, blank=True, related_name="moves"
    )
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.CREATED)
    epoch = models.PositiveIntegerField(help_text="The placement epoch the device gets on arrival.")
    snapshot = models.TextField(blank=True, help_text="Source snapshot of the bulk copy.")
    changes_horizon = models.BigIntegerField(
        default=0,
        help_text="Changes the source logged in transactions before this id are copied.",
    )
    rows_copied = models.JSONField(default=dict, blank=True, help_text="Rows per table.")
    verification = models.JSONField(default=dict, blank=True)
    stall_ms = models.FloatField(
        null=True, blank=True, help_text="How long writers were held: the fenced window."
    )
    requested_by = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    fenced_at = models.DateTimeField(null=True, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)
    cleanup_after = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    UNSWITCHED = (Phase.CREATED, Phase.COPYING, Phase.FENCED, Phase.VERIFIED, Phase.ACTIVATED)
    IN_FLIGHT = (*UNSWITCHED, Phase.SWITCHED)
    # The source is fenced: its writers and readers wait for the mover.
    HOLDING_WRITERS = (Phase.FENCED, Phase.VERIFIED, Phase.ACTIVATED, Phase.SWITCHED)
    FINAL = (Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["device"],
                condition=models.Q(
                    phase__in=["created", "copying", "fenced", "verified", "activated", "switched"]
                ),
                name="one_move_in_flight_per_device",
            )
        ]

    def __str__(self) -> str:
        return f"move {self.pk}: device {self.device_id} {self.source_id}->{self.target_id}"


class DeviceDeletion(models.Model):
    """A deleted device whose rows on the shards are still to be removed.

    Written in the same transaction as the delete, so no deletion is forgotten: a
    Celery task removes the rows after commit (shards.deletion), and beat retries
    any that a shard being down or a lost task left unfinished.
    """

    device_id = models.BigIntegerField(unique=True, help_text="The deleted device's id.")
    serial = models.CharField(max_length=128)
    requested_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    rows_removed = models.JSONField(default=dict, blank=True, help_text="Rows per shard and table.")
    error = models.TextField(blank=True, help_text="Why the last attempt did not finish.")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["requested_at"],
                condition=models.Q(finished_at__isnull=True),
                name="device_deletion_pending_idx",
            )
        ]

    def __str__(self) -> str:
        return f"deletion of device {self.device_id} ({self.serial})"
