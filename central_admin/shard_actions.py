"""The shard page's POST actions: change the weight, start a drain in the background."""

from django.contrib import messages
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_POST

from central_admin.actions import change_page, object_for_change
from central_admin.forms import DrainForm, WeightForm, form_errors
from core.models import Shard
from routers.registry import refresh_registry
from shards.rebalance.drain import mark_draining, pinned_on
from shards.rebalance.runner import RebalanceError
from shards.tasks import drain_shard


@require_POST
def change_weight(request: HttpRequest, alias: str) -> HttpResponse:
    """New devices and rebalances follow the weight; nothing moves by itself."""
    shard = object_for_change(request, Shard, alias)
    form = WeightForm(request.POST)
    if shard.state == Shard.State.RETIRED:
        messages.error(request, f"{alias} is retired; its weight no longer matters.")
    elif not form.is_valid():
        messages.error(request, f"Weight not changed: {form_errors(form)}")
    else:
        old, new = shard.weight, form.cleaned_data["weight"]
        Shard.objects.filter(alias=alias).update(weight=new, updated_at=timezone.now())
        refresh_registry(force=True)
        messages.success(request, f"{alias}: weight {old} -> {new}.")
    return change_page(shard)


@require_POST
def drain(request: HttpRequest, alias: str) -> HttpResponse:
    """Mark the shard draining now; a Celery task moves its devices off and retires it."""
    shard = object_for_change(request, Shard, alias)
    form = DrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Not drained: {form_errors(form)}")
        return change_page(shard)
    include_pinned = form.cleaned_data["include_pinned"]
    pinned = pinned_on(alias)
    if pinned and not include_pinned:
        names = ", ".join(serial for _, serial in pinned[:10])
        messages.error(
            request,
            f"Not drained: {alias} holds {len(pinned)} pinned devices ({names}); unpin them or"
            " tick 'include pinned' (they move and stay pinned).",
        )
        return change_page(shard)
    try:
        mark_draining(alias)
        drain_shard.delay(alias, form.cleaned_data["cost"] or "rows", include_pinned)
    except (RebalanceError, DatabaseError) as exc:
        messages.error(request, f"Not drained: {exc}")
    except Exception as exc:  # the broker is down; the shard stays draining
        messages.error(
            request,
            f"{alias} is draining, but the background drain could not be queued ({exc});"
            f" run `manage.py drain_shard {alias}`.",
        )
    else:
        messages.success(
            request,
            f"{alias} is draining: no new devices go there; its devices move off in the"
            " background (progress below).",
        )
    return change_page(shard)
