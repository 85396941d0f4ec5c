"""Endpoints for web users (Django session login): their devices, readings and commands.

Who sees and commands what is decided in core.access. A device the user may not see,
or a command of one, is a 404.
"""

from datetime import UTC, datetime, timedelta

from django.http import HttpRequest
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.security import django_auth
from pydantic import Field, field_validator, model_validator

from api.schemas import (
    CommandIn,
    CommandOut,
    CommandsOut,
    DevicesOut,
    ErrorOut,
    MetricName,
    ReadingsOut,
    SeriesOut,
)
from core.access import DeviceNotVisible, device_for_user, visible_devices
from core.models import Placement
from shards.commands import (
    NO_SUCH_COMMAND,
    CommandError,
    cancel_command,
    create_command,
    device_of_command,
)
from shards.models import Command, Reading
from shards.overview import device_overviews
from shards.series import device_series

router = Router(tags=["web users"], auth=django_auth)
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut}
MAX_READINGS = 10_000
SERIES_DEFAULT_SPAN = timedelta(hours=24)
SERIES_MAX_SPAN = timedelta(days=366)
EARLIEST_YEAR, LATEST_YEAR = 1900, 9998


class Page(Schema):
    limit: int = Field(default=100, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class TimeSpan(Schema):
    start: datetime | None = None
    end: datetime | None = None

    @field_validator("start", "end")
    @classmethod
    def in_utc(cls, value: datetime | None) -> datetime | None:
        """PostgreSQL refuses some offsets Python allows (+17:00): hand it UTC only."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
            # Also keeps `end - SERIES_DEFAULT_SPAN` and its kin inside what dates can hold.
            raise ValueError(f"the year must lie between {EARLIEST_YEAR} and {LATEST_YEAR}")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def ordered(self):
        if self.start and self.end and self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class ReadingRange(TimeSpan):
    metric: MetricName | None = None
    limit: int = Field(default=1000, ge=1, le=MAX_READINGS)


class SeriesRange(TimeSpan):
    metric: MetricName | None = None

    def bounds(self) -> tuple[datetime, datetime]:
        """[start, end): the last 24 hours unless given; at most SERIES_MAX_SPAN long."""
        end = self.end or datetime.now(UTC)
        start = self.start or end - SERIES_DEFAULT_SPAN
        if start >= end:
            raise HttpError(400, "start must be before end")
        if end - start > SERIES_MAX_SPAN:
            raise HttpError(400, f"a series spans at most {SERIES_MAX_SPAN.days} days")
        return start, end


@router.get("/devices", response={200: DevicesOut, **ERRORS})
def my_devices(request: HttpRequest, page: Query[Page]):
    """My devices across all shards, with latest values; shards are asked in parallel."""
    devices = list(
        visible_devices(request.user).order_by("id")[page.offset : page.offset + page.limit]
    )
    count = visible_devices(request.user).count()
    placement = dict(
        Placement.objects.filter(device__in=devices).values_list("device_id", "shard_id")
    )
    overviews, unavailable = device_overviews(placement)
    answer = []
    for device in devices:
        overview = overviews[device.pk]
        answer.append(
            {
                "device_id": device.pk,
                "serial": device.serial,
                "name": device.name,
                "shard": overview.shard,
                "online": overview.online,
                "last_seen_at": overview.last_seen_at,
                "latest": overview.latest,
            }
        )
    return {"devices": answer, "count": count, "unavailable_shards": unavailable}


@router.get("/devices/{device_id}/readings", response={200: ReadingsOut, **ERRORS})
def device_readings(request: HttpRequest, device_id: int, span: Query[ReadingRange]):
    device = device_for_user(request.user, device_id)
    readings = Reading.objects.for_device(device)
    if span.metric:
        readings = readings.filter(metric=span.metric)
    if span.start:
        readings = readings.filter(ts__gte=span.start)
    if span.end:
        readings = readings.filter(ts__lt=span.end)
    rows = list(readings.order_by("ts", "metric").values("ts", "metric", "value")[: span.limit + 1])
    return {
        "device_id": device.pk,
        "readings": rows[: span.limit],
        "truncated": len(rows) > span.limit,
    }


@router.get("/devices/{device_id}/series", response={200: SeriesOut, **ERRORS})
def device_series_view(request: HttpRequest, device_id: int, span: Query[SeriesRange]):
    """Min/max/mean/count per metric in 200-400 time buckets; long ranges come from rollups."""
    device = device_for_user(request.user, device_id)
    start, end = span.bounds()
    series = device_series(device, start, end)
    metrics = series.metrics
    if span.metric:
        metrics = {span.metric: metrics.get(span.metric, [])}
    return {
        "device_id": device.pk,
        "start": start,
        "end": end,
        "bucket_seconds": int(series.width.total_seconds()),
        "metrics": {name: [vars(b) for b in buckets] for name, buckets in metrics.items()},
        "latest_ts": series.latest_ts,
    }


@router.post("/devices/{device_id}/commands", response={201: CommandOut, **ERRORS})
def send_command(request: HttpRequest, device_id: int, payload: CommandIn):
    device = device_for_user(request.user, device_id, to_command=True)
    command = create_command(
        device.pk,
        payload.name,
        payload.args,
        expires_in=payload.expires_in,
        created_by_id=request.user.pk,
    )
    return Status(201, command)


@router.get("/devices/{device_id}/commands", response={200: CommandsOut, **ERRORS})
def device_commands(request: HttpRequest, device_id: int):
    device = device_for_user(request.user, device_id)
    return {"commands": list(Command.objects.for_device(device).order_by("-id")[:100])}


@router.post("/commands/{command_id}/cancel", response={200: CommandOut, **ERRORS})
def cancel(request: HttpRequest, command_id: int):
    """Cancel a command that has not finished. Another user's command is answered as an
    unknown one is, so the answers do not reveal which command ids exist."""
    device_id = device_of_command(command_id)
    try:
        device_for_user(request.user, device_id, to_command=True)
    except DeviceNotVisible:
        raise CommandError(NO_SUCH_COMMAND, status=404) from None
    return cancel_command(device_id, command_id)
