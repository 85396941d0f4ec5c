"""Models that live on a device's shard.

Rows carry `device_id` as a plain column (no foreign key can cross databases).
Every query goes through `for_device()` or `on_shard()` (routers.managers);
anything else raises. Rows a client sees have cluster-wide ids (shards.ids).
"""

from django.db import models

from routers.managers import ShardManager
from shards.ids import ClusterIdField, ClusterIdManager


class ShardIdentity(models.Model):
    """The single row that tells a shard database which registry number it carries."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    alias = models.CharField(max_length=63)
    number = models.PositiveSmallIntegerField()
    registered_at = models.DateTimeField(auto_now=True)

    objects = ShardManager()

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="one_identity_row")]

    def __str__(self) -> str:
        return f"{self.alias} (number {self.number})"


class DeviceFence(models.Model):
    """Per-device guard: writes take it FOR SHARE and proceed only while it is active here."""

    class State(models.TextChoices):
        PENDING = "pending", "pending (being copied here)"
        ACTIVE = "active", "active (this shard owns the device)"
        COPYING = "copying", "copying (owned here; a move is copying it; no deletes)"
        FENCED = "fenced", "fenced (a move is finishing)"
        MOVED = "moved", "moved (another shard owns the device)"

    device_id = models.BigIntegerField(primary_key=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    epoch = models.PositiveIntegerField(default=1, help_text="The placement epoch it belongs to.")
    updated_at = models.DateTimeField(auto_now=True)

    objects = ShardManager()

    def __str__(self) -> str:
        return f"device {self.device_id}: {self.state}"


class Upload(models.Model):
    """A device's batch as received, stored before import so nothing acknowledged is lost."""

    class Status(models.TextChoices):
        STAGED = "staged", "staged"
        IMPORTED = "imported", "imported"
        FAILED = "failed", "failed"

    id = ClusterIdField()
    device_id = models.BigIntegerField()
    batch_id = models.CharField(max_length=128, help_text="Chosen by the device; retries reuse it.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STAGED)
    payload = models.JSONField(help_text="The readings exactly as accepted.")
    reading_count = models.PositiveIntegerField()
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    imported_at = models.DateTimeField(null=True, blank=True)

    objects = ClusterIdManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device_id", "batch_id"], name="unique_device_batch")
        ]
        indexes = [
            models.Index(
                fields=["received_at"],
                condition=models.Q(status="staged"),
                name="upload_staged_idx",
            )
        ]

    def __str__(self) -> str:
        return f"upload {self.pk} ({self.status})"


class Reading(models.Model):
    """One measured value; (device, metric, ts) is unique so a re-import cannot double it."""

    pk = models.CompositePrimaryKey("device_id", "metric", "ts")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    ts = models.DateTimeField()
    value = models.FloatField()

    objects = ShardManager()

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}@{self.ts:%Y-%m-%dT%H:%M:%S}={self.value}"


class LatestValue(models.Model):
    """The newest reading per device and metric, for dashboards that must not scan readings."""

    pk = models.CompositePrimaryKey("device_id", "metric")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    ts = models.DateTimeField()
    value = models.FloatField()
    updated_at = models.DateTimeField(auto_now=True)

    objects = ShardManager()

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}={self.value}"


class Command(models.Model):
    """An instruction for a device, left by a user and picked up when the device reports."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        SENT = "sent", "sent"
        ACKNOWLEDGED = "acknowledged", "acknowledged"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        EXPIRED = "expired", "expired"
        CANCELLED = "cancelled", "cancelled"

    id = ClusterIdField()
    device_id = models.BigIntegerField()
    name = models.CharField(max_length=64)
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    created_by_id = models.BigIntegerField(
        null=True, blank=True, help_text="Directory user id (no foreign key across databases)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times it was delivered.")
    result = models.JSONField(null=True, blank=True)

    objects = ClusterIdManager()

    class Meta:
        indexes = [models.Index(fields=["device_id", "status"], name="command_device_status_idx")]

    def __str__(self) -> str:
        return f"command {self.pk} {self.name} ({self.status})"


class DeviceStatus(models.Model):
    """When a device's data last arrived, kept per device so dashboards need not scan uploads."""

    device_id = models.BigIntegerField(primary_key=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_upload_id = models.BigIntegerField(
        null=True, blank=True, help_text="The upload imported last (no foreign key: ids move)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = ShardManager()

    def __str__(self) -> str:
        return f"device {self.device_id}: last seen {self.last_seen_at}"


class Alert(models.Model):
    """A condition noticed on a device; at most one unresolved alert per device and condition.

    Raised by the analysis tasks (offline, thresholds, anomalies), acknowledged by a
    person, cleared when the condition ends. Cleared alerts stay as the history.
    """

    class Severity(models.TextChoices):
        INFO = "info", "info"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    class State(models.TextChoices):
        OPEN = "open", "open"
        ACKNOWLEDGED = "acknowledged", "acknowledged"
        CLEARED = "cleared", "cleared"

    id = ClusterIdField()
    device_id = models.BigIntegerField()
    condition = models.CharField(
        max_length=128, help_text="What is wrong, as a key: 'offline', 'max:temperature', ..."
    )
    metric = models.CharField(max_length=64, blank=True)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    message = models.TextField()
    value = models.FloatField(null=True, blank=True, help_text="The value that raised it.")
    opened_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by_id = models.BigIntegerField(
        null=True, blank=True, help_text="Directory user id (no foreign key across databases)."
    )
    cleared_at = models.DateTimeField(null=True, blank=True)

    objects = ClusterIdManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device_id", "condition"],
                condition=~models.Q(state="cleared"),
                name="one_unresolved_alert_per_condition",
            )
        ]
        indexes = [models.Index(fields=["device_id", "state"], name="alert_device_state_idx")]

    def __str__(self) -> str:
        return f"alert {self.pk} {self.condition} ({self.state})"
