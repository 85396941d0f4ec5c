"""Sending a command from the device page (POST, CSRF-checked).

The page's script posts with Accept: application/json and gets JSON back, so the
page never reloads; without the script the form posts normally and is redirected
back (or shown again with its errors). Bad input is a 400 and creates nothing.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal.access import commandable_device_or_404
from portal.forms import CommandForm
from portal.ranges import range_from
from portal.views.device_page import page_context
from portal.views.shared import shard_outage_as_503, wants_json
from shards.commands import CommandError


@require_POST
@login_required
@shard_outage_as_503
def send_command(request: HttpRequest, device_id: int) -> HttpResponse:
    device = commandable_device_or_404(request.user, device_id)
    form = CommandForm(request.POST)
    if not form.is_valid():
        if wants_json(request):
            return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
        context = page_context(request, device, range_from({}), form)
        return render(request, "portal/device_page.html", context, status=400)
    try:
        command = form.create(device.pk, request.user.pk)
    except CommandError as exc:
        return JsonResponse({"errors": {"__all__": [{"message": str(exc)}]}}, status=exc.status)
    if wants_json(request):
        return JsonResponse({"id": command.pk, "status": command.status}, status=201)
    return redirect("portal:device", device_id=device.pk)
