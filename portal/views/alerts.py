"""Acknowledging an alert from the device page (POST, CSRF-checked)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from portal.access import device_or_404
from portal.views.shared import shard_outage_as_503, wants_json
from shards.alerts import AlertNotFound, acknowledge_alert


@require_POST
@login_required
@shard_outage_as_503
def acknowledge(request: HttpRequest, device_id: int, alert_id: int) -> HttpResponse:
    """Anyone who may see the device may acknowledge its alerts: it commands nothing."""
    device = device_or_404(request.user, device_id)
    try:
        alert = acknowledge_alert(device.pk, alert_id, request.user.pk)
    except AlertNotFound:
        raise Http404("no such alert") from None
    if wants_json(request):
        return JsonResponse({"id": alert.pk, "state": alert.state})
    return redirect("portal:device", device_id=device.pk)
