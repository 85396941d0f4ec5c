"""The device page's POST actions: credentials, commands, alerts and moves.

Credentials, alerts and moves need the change permission on devices; commands need
`core.command_device`, as everywhere else (core.access).

Each action answers with a redirect to the device page and an admin message;
bad input or a refused operation is an error message and changes nothing.
"""

import logging

from django.conf import settings
from django.contrib import admin, messages
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from central_admin.actions import change_page, object_for_change
from central_admin.forms import CommandForm, form_errors
from core.access import COMMAND_EVERY_DEVICE
from core.credentials import revoke_tokens, rotate_token
from core.models import Device
from routers.errors import RoutingError
from shards.alerts import AlertNotFound, acknowledge_alert
from shards.commands import CommandError, cancel_command
from shards.fence import DeviceMoved
from shards.moves.protocol import MoveError, start_move
from shards.tasks import run_move_job

logger = logging.getLogger(__name__)
# A shard that is down or a device held by a move: the action is refused, the page says why.
SHARD_TROUBLE = (DatabaseError, RoutingError, DeviceMoved)


@require_POST
@never_cache
def rotate(request: HttpRequest, device_id: int) -> HttpResponse:
    """Answers with the new token itself: a message would carry it in a signed cookie."""
    device = object_for_change(request, Device, device_id)
    token = rotate_token(device)
    context = {
        **admin.site.each_context(request),
        "device": device,
        "device_url": change_page(device).url,
        "token": token,
        "grace_hours": f"{settings.TOKEN_ROTATION_GRACE.total_seconds() / 3600:g}",
    }
    return render(request, "central_admin/new_token.html", context)


@require_POST
def revoke(request: HttpRequest, device_id: int) -> HttpResponse:
    device = object_for_change(request, Device, device_id)
    count = revoke_tokens(device)
    messages.success(request, f"Revoked {count} live token(s) of {device.serial}.")
    return change_page(device)


@require_POST
def command_create(request: HttpRequest, device_id: int) -> HttpResponse:
    device = object_for_change(request, Device, device_id, COMMAND_EVERY_DEVICE)
    form = CommandForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Command not created: {form_errors(form)}")
        return change_page(device)
    try:
        command = form.create(device.pk, request.user.pk)
    except SHARD_TROUBLE as exc:
        messages.error(request, f"Command not created: {exc}")
    else:
        messages.success(request, f"Command {command.pk} ({command.name}) queued.")
    return change_page(device)


@require_POST
def command_cancel(request: HttpRequest, device_id: int, command_id: int) -> HttpResponse:
    device = object_for_change(request, Device, device_id, COMMAND_EVERY_DEVICE)
    try:
        cancel_command(device.pk, command_id)
    except (CommandError, *SHARD_TROUBLE) as exc:
        messages.error(request, f"Not cancelled: {exc}")
    else:
        messages.success(request, f"Command {command_id} cancelled.")
    return change_page(device)


@require_POST
def alert_acknowledge(request: HttpRequest, device_id: int, alert_id: int) -> HttpResponse:
    device = object_for_change(request, Device, device_id)
    try:
        acknowledge_alert(device.pk, alert_id, request.user.pk)
    except (AlertNotFound, *SHARD_TROUBLE) as exc:
        messages.error(request, f"Not acknowledged: {exc}")
    else:
        messages.success(request, f"Alert {alert_id} acknowledged.")
    return change_page(device)


@require_POST
def move(request: HttpRequest, device_id: int) -> HttpResponse:
    """Record a move job and queue it for a worker; the page then follows its phases."""
    device = object_for_change(request, Device, device_id)
    target = request.POST.get("target", "").strip()
    if not target:
        messages.error(request, "Not moved: choose a target shard.")
        return change_page(device)
    try:
        job = start_move(device.pk, target, requested_by=f"admin {request.user.get_username()}")
    except (MoveError, *SHARD_TROUBLE) as exc:
        messages.error(request, f"Not moved: {exc}")
        return change_page(device)
    try:
        run_move_job.delay(job.pk)
    except Exception as exc:  # the broker is down: the job stays recorded, nothing moved
        logger.warning("move job %s not queued: %r", job.pk, exc)
        messages.error(
            request,
            f"Move job {job.pk} is recorded but could not be queued ({exc});"
            " `manage.py move_device --resume` runs it.",
        )
        return change_page(device)
    messages.success(request, f"Move job {job.pk} started: {job.source_id} -> {job.target_id}.")
    return change_page(device)
