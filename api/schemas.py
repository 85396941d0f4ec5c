"""Request and response shapes, with the limits that keep a bad client from hurting anyone.

Every request body is validated whole before anything is written: one bad
reading rejects the batch, and the error names the item and the field.
"""

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from django.conf import settings
from ninja import Schema
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

from core.json_values import check_json_value

EARLIEST_READING = datetime(2000, 1, 1, tzinfo=UTC)


def without_nul(value: str) -> str:
    """PostgreSQL stores no NUL character in text; refuse it here, not with a 500."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\u0000) characters")
    return value


Text = Annotated[str, AfterValidator(without_nul)]
# Command args and results: size, depth and characters checked by core.json_values.
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_value)]
JsonValue = Annotated[Any, AfterValidator(check_json_value)]

MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")]
BatchId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
Serial = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
COMMAND_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
CommandName = Annotated[str, StringConstraints(pattern=COMMAND_NAME_PATTERN)]
COMMAND_MAX_EXPIRY = 30 * 24 * 3600


class Strict(BaseModel):
    """Unknown fields are an error, not silently dropped.

    A plain pydantic model, not ninja's Schema: request bodies never come from ORM
    objects, and Schema's wrapping validator (for reading attributes off them) cost
    about 40% of an upload's time, run once per reading.
    """

    model_config = ConfigDict(extra="forbid")


class ReadingIn(Strict):
    ts: datetime = Field(description="ISO 8601 (UTC if no offset) or Unix epoch seconds.")
    metric: MetricName
    value: FiniteNumber

    @field_validator("ts", mode="before")
    @classmethod
    def parse_ts(cls, raw: Any) -> datetime:
        if isinstance(raw, bool):
            raise ValueError("must be an ISO 8601 string or epoch seconds, not a boolean")
        if isinstance(raw, int | float):
            if not math.isfinite(raw) or abs(raw) > 1e11:
                raise ValueError("epoch seconds out of range")
            parsed = datetime.fromtimestamp(raw, tz=UTC)
        elif isinstance(raw, str) and len(raw) <= 40:
            try:
                parsed = datetime.fromisoformat(raw)
            except ValueError:
                raise ValueError("not an ISO 8601 timestamp") from None
        else:
            raise ValueError("must be an ISO 8601 string or epoch seconds")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        latest = datetime.now(UTC) + timedelta(seconds=settings.READING_MAX_FUTURE_SECONDS)
        if not EARLIEST_READING <= parsed <= latest:
            raise ValueError(
                f"must lie between {EARLIEST_READING:%Y-%m-%d} and "
                f"{settings.READING_MAX_FUTURE_SECONDS} s from now"
            )
        return parsed.astimezone(UTC)


class UploadIn(Strict):
    batch_id: BatchId
    readings: list[ReadingIn] = Field(min_length=1, max_length=settings.UPLOAD_MAX_READINGS)


# An upload's validated readings as the JSON the shard stages (shards.ingest.stage_payload),
# written by pydantic's compiled serializer: times in UTC ("Z"), values as floats.
READINGS_JSON = TypeAdapter(list[ReadingIn])


class CommandOut(Schema):
    id: int
    name: str
    args: dict[str, Any]
    status: str
    expires_at: datetime | None
    attempts: int = 0
    created_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None


class UploadAccepted(Schema):
    upload_id: int
    status: str
    commands: list[CommandOut]


class UploadReceipt(Schema):
    upload_id: int
    status: str
    readings: int = Field(description="Readings received in the batch.")
    stored: int | None = Field(
        default=None, description="Readings the import stored (null until imported)."
    )
    duplicates: int | None = Field(
        default=None,
        description="Readings dropped as duplicates: the same metric and time earlier in the"
        " batch, or already stored by an earlier batch (null until imported).",
    )
    received_at: datetime
    imported_at: datetime | None = None
    error: str | None = None


class CommandsOut(Schema):
    commands: list[CommandOut]


class CommandResultIn(Strict):
    status: Literal["acknowledged", "succeeded", "failed"]
    result: JsonValue = None


class EnrollIn(Strict):
    provisioning_key: Text = Field(min_length=1, max_length=200)
    serial: Serial
    name: Text = Field(default="", max_length=200)


class EnrollOut(Schema):
    device_id: int
    token: str


class CommandIn(Strict):
    name: CommandName
    args: JsonObject = Field(default_factory=dict)
    expires_in: int | None = Field(
        default=None, ge=1, le=COMMAND_MAX_EXPIRY, description="Seconds until it expires."
    )


class LatestOut(Schema):
    value: float
    ts: datetime


class DeviceOut(Schema):
    device_id: int
    serial: str
    name: str
    shard: str
    online: bool | None
    last_seen_at: datetime | None
    latest: dict[str, LatestOut]


class DevicesOut(Schema):
    devices: list[DeviceOut]
    count: int
    unavailable_shards: list[str]


class ReadingOut(Schema):
    ts: datetime
    metric: str
    value: float


class ReadingsOut(Schema):
    device_id: int
    readings: list[ReadingOut]
    truncated: bool


class BucketOut(Schema):
    start: datetime
    min: float
    max: float
    mean: float
    count: int


class SeriesOut(Schema):
    device_id: int
    start: datetime
    end: datetime
    bucket_seconds: int
    metrics: dict[str, list[BucketOut]]
    latest_ts: datetime | None


class ErrorOut(Schema):
    detail: str
    errors: list[dict[str, str]] | None = None
