"""Models that live on a device's shard.

Rows carry `device_id` as a plain column (no foreign key can cross databases).
Every query goes through `for_device()` or `on_shard()` (routers.managers);
anything else raises. Rows a client sees have cluster-wide ids (shards.ids).
"""

from decimal import Decimal

from django.db import models

from routers.silos import ShardModel
from shards.analysis.aggregates import bucket_mean
from shards.ids import ClusterIdField, ClusterIdManager
from shards.reads import FencedManager


class DeviceRows(ShardModel):
    """A device's own data: moved with it, and read only where its fence says it is served.

    Its `for_device()` querysets ask the fence in the statement that reads the rows
    (shards.reads); the shard's bookkeeping (its identity, the fences, a move's change
    log) derives from ShardModel alone.
    """

    objects = FencedManager()

    class Meta:
        abstract = True


class ShardIdentity(ShardModel):
    """The single row that tells a shard database which registry number it carries."""

    per_shard = True  # about the shard itself, not a device

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    alias = models.CharField(max_length=63)
    number = models.PositiveSmallIntegerField()
    registered_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="one_identity_row")]

    def __str__(self) -> str:
        return f"{self.alias} (number {self.number})"


class DeviceFence(ShardModel):
    """Per-device guard: writes take it FOR SHARE and proceed only while it is active here."""

    moves_with_device = False  # each shard keeps its own row

    class State(models.TextChoices):
        PENDING = "pending", "pending (being copied here)"
        ACTIVE = "active", "active (this shard owns the device)"
        COPYING = "copying", "copying (owned here; a move is copying it; no deletes)"
        FENCED = "fenced", "fenced (a move is finishing)"
        MOVED = "moved", "moved (another shard owns the device)"

    # The named sets of states, defined once; shards/fence.py applies them.
    # Writes are taken, and reads served, here (the owner, maybe being copied).
    SERVING = (State.ACTIVE, State.COPYING)
    # Rows may be deleted (retention, a device's deletion): no move is copying them.
    DELETABLE = (State.ACTIVE,)
    # This shard holds the device as its owner, a move's fence included: what counts
    # towards the shard's devices and rows (a moved device's leftovers do not).
    HELD = (State.ACTIVE, State.COPYING, State.FENCED)

    device_id = models.BigIntegerField(primary_key=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    epoch = models.PositiveIntegerField(default=1, help_text="The placement epoch it belongs to.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"device {self.device_id}: {self.state}"


class Upload(DeviceRows):
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
    stored_count = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Readings the import stored; the rest were duplicates (same metric and time"
        " earlier in the batch, or already stored). Empty until imported.",
    )
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


class Reading(DeviceRows):
    """One measured value; (device, metric, ts) is unique so a re-import cannot double it."""

    pk = models.CompositePrimaryKey("device_id", "metric", "ts")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    ts = models.DateTimeField()
    value = models.FloatField()

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}@{self.ts:%Y-%m-%dT%H:%M:%S}={self.value}"


class LatestValue(DeviceRows):
    """The newest reading per device and metric, for dashboards that must not scan readings."""

    pk = models.CompositePrimaryKey("device_id", "metric")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    ts = models.DateTimeField()
    value = models.FloatField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}={self.value}"


class Command(DeviceRows):
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


class DeviceStatus(DeviceRows):
    """When a device's data last arrived, kept per device so dashboards need not scan uploads."""

    device_id = models.BigIntegerField(primary_key=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_upload_id = models.BigIntegerField(
        null=True, blank=True, help_text="The upload imported last (no foreign key: ids move)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"device {self.device_id}: last seen {self.last_seen_at}"


class Alert(DeviceRows):
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


class RollupPending(DeviceRows):
    """A minute of a device's metric whose rollups are stale: the import marks it, the rollup
    step recomputes it and deletes the mark.

    The import marks with ON CONFLICT DO UPDATE, so an import still open holds the row
    locked and the rollup step (FOR UPDATE SKIP LOCKED) leaves the mark for its next run
    instead of recomputing before those readings are visible. The oldest mark of a device
    is its low watermark: every minute before it is rolled up.
    """

    pk = models.CompositePrimaryKey("device_id", "metric", "minute")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    minute = models.DateTimeField()
    marked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}@{self.minute:%Y-%m-%dT%H:%M} pending"


class NumericField(models.Field):
    """PostgreSQL numeric with no precision or scale: exact, and no range to leave.

    Django's DecimalField insists on max_digits and decimal_places, and a fixed
    scale would round small sums away.
    """

    description = "Arbitrary-precision number (PostgreSQL numeric)"

    def db_type(self, connection) -> str:
        return "numeric"

    def to_python(self, value: object) -> Decimal | None:
        return None if value is None else Decimal(value)


class ReadingRollup(DeviceRows):
    """Count, min, max and sum of one device's metric over one UTC minute, hour or day.

    Minutes come from raw readings, hours from minutes, days from hours. The sum is
    numeric: any finite float is a legal reading, and two of 1.7e308 already sum
    past the float8 range. The mean is sum / count, kept within min and max
    (shards.analysis.aggregates). Rollups outlive the raw readings that retention deletes.
    """

    class Granularity(models.TextChoices):
        MINUTE = "minute", "minute"
        HOUR = "hour", "hour"
        DAY = "day", "day"

    pk = models.CompositePrimaryKey("device_id", "metric", "granularity", "bucket")
    device_id = models.BigIntegerField()
    metric = models.CharField(max_length=64)
    granularity = models.CharField(max_length=8, choices=Granularity.choices)
    bucket = models.DateTimeField(help_text="Where the bucket starts (UTC).")
    count = models.PositiveBigIntegerField()
    min = models.FloatField()
    max = models.FloatField()
    sum = NumericField()
    last_ts = models.DateTimeField(help_text="The newest reading in the bucket.")

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric} {self.granularity}@{self.bucket:%Y-%m-%dT%H:%M}"

    @property
    def mean(self) -> float:
        return bucket_mean(self.sum, self.count, self.min, self.max)


class RawRetention(DeviceRows):
    """Where a device's raw readings start since retention deleted older ones.

    Always the start of a UTC day. A reading that arrives for a time before it finds
    its minute already rolled up from readings now gone: the rollup step adds it to
    that minute and deletes it, instead of recomputing the minute from raw.
    """

    device_id = models.BigIntegerField(primary_key=True)
    raw_since = models.DateTimeField()

    def __str__(self) -> str:
        return f"device {self.device_id}: raw readings since {self.raw_since:%Y-%m-%d}"


class MoveCapture(ShardModel):
    """A device a move is copying from this shard: its changed rows are logged meanwhile.

    Statement triggers on every device table (shards.moves.capture) write the keys of
    the rows changed for such a device into MoveChange, so the move copies and checks
    only those inside its fenced window, however many rows the device has.
    """

    moves_with_device = False

    device_id = models.BigIntegerField(primary_key=True)
    started_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"changes of device {self.device_id} captured since {self.started_at}"


class MoveChange(ShardModel):
    """The key of one row changed (inserted or updated) while its device was being copied."""

    moves_with_device = False

    id = models.BigAutoField(primary_key=True)
    device_id = models.BigIntegerField()
    table_name = models.CharField(max_length=63)
    key = models.JSONField(help_text="The row's primary key columns and values.")
    xact = models.BigIntegerField(
        help_text="The writing transaction's id: commits come out of order, so a pass of the"
        " move copies by transaction horizon, not by log position."
    )

    class Meta:
        indexes = [models.Index(fields=["device_id", "xact"], name="move_change_device_idx")]

    def __str__(self) -> str:
        return f"{self.table_name} {self.key} of device {self.device_id}"
