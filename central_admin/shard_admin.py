"""Shards in the admin: the registry with live figures from each shard, weight and drain.

Shards are added with `manage.py add_shard` (it creates and migrates the
database), so the admin neither adds, edits connection settings, nor deletes.
"""

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import URLPattern, path
from django.utils.html import format_html

from central_admin import shard_actions
from central_admin.forms import DrainForm, WeightForm
from central_admin.shard_figures import ShardFigures, all_figures
from core.models import Rebalance, Shard
from shards.rebalance.drain import drain_kind
from shards.rebalance.report import counts

FIGURES_ATTR = "_fleet_figures"


class ShardChangeList(ChangeList):
    """Asks the page's live shards for their figures, all at once."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        live = [s.alias for s in self.result_list if s.state != Shard.State.RETIRED]
        figures = all_figures(live)
        for shard in self.result_list:
            setattr(shard, FIGURES_ATTR, figures.get(shard.alias))


def figures_of(shard: Shard) -> ShardFigures | None:
    return getattr(shard, FIGURES_ATTR, None)


def _figure(shard: Shard, show) -> str:
    figures = figures_of(shard)
    if figures is None:
        return "-"
    if not figures.reachable:
        return ""
    return show(figures)


@admin.register(Shard)
class ShardAdmin(admin.ModelAdmin):
    list_display = (
        "alias",
        "state",
        "weight",
        "devices",
        "rows",
        "size",
        "reachable",
        "latency",
        "pool",
        "replication",
        "import_lag",
    )
    list_filter = ("state",)
    readonly_fields = ("number", "created_at", "updated_at")
    exclude = ("db_password",)
    change_form_template = "central_admin/shard_change_form.html"

    class Media:
        css = {"all": ("central_admin/fleet.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(device_count=Count("placements"))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type:
        return ShardChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Shard | None = None) -> bool:
        return False  # weight and drain have their own forms; connection settings stay put

    def has_delete_permission(self, request: HttpRequest, obj: Shard | None = None) -> bool:
        return False

    @admin.display(description="devices", ordering="device_count")
    def devices(self, shard: Shard) -> int:
        return shard.device_count

    @admin.display(description="rows (estimate)")
    def rows(self, shard: Shard) -> str:
        return _figure(shard, lambda f: f"{f.rows_estimate:,}")

    @admin.display(description="size on disk")
    def size(self, shard: Shard) -> str:
        return _figure(shard, lambda f: filesizeformat(f.size_bytes))

    @admin.display(description="reachable")
    def reachable(self, shard: Shard) -> str:
        figures = figures_of(shard)
        if figures is None:
            return "-"
        if figures.reachable:
            return format_html('<span class="{}">yes</span>', "fleet-ok")
        return format_html(
            '<span class="fleet-unreachable" title="{}">unreachable</span>', figures.error
        )

    @admin.display(description="latency")
    def latency(self, shard: Shard) -> str:
        return _figure(shard, lambda f: f"{f.latency_ms:.1f} ms")

    @admin.display(description="pool (PgBouncer)")
    def pool(self, shard: Shard) -> str:
        def pool(f: ShardFigures) -> str:
            if f.pool_error:
                return f"pooler did not say: {f.pool_error}"
            if f.pool is None:
                return "direct (no pooler)"
            return f.pool.summary()

        return _figure(shard, pool)

    @admin.display(description="replication")
    def replication(self, shard: Shard) -> str:
        return _figure(shard, lambda f: f.replication.summary() if f.replication else "-")

    @admin.display(description="import lag")
    def import_lag(self, shard: Shard) -> str:
        def lag(f: ShardFigures) -> str:
            if not f.staged_uploads:
                return "none staged"
            return f"{f.staged_uploads} staged, oldest {f.oldest_staged_seconds:.0f} s"

        return _figure(shard, lag)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<str:alias>/weight/", wrap(shard_actions.change_weight), name="core_shard_weight"
            ),
            path("<str:alias>/drain/", wrap(shard_actions.drain), name="core_shard_drain"),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        shard = self.get_object(request, object_id)
        if shard is None:
            raise Http404(f"no shard {object_id}")
        runs = list(Rebalance.objects.filter(kind=drain_kind(shard.alias)).order_by("-id")[:5])
        for run in runs:
            run.tally = counts(run)
        live = shard.state != Shard.State.RETIRED
        extra_context = {
            **(extra_context or {}),
            "figures": all_figures([shard.alias]).get(shard.alias) if live else None,
            "weight_form": WeightForm(initial={"weight": shard.weight}),
            "drain_form": DrainForm(),
            "drain_runs": runs,
            "can_operate": request.user.has_perm("core.change_shard"),
        }
        return super().change_view(request, object_id, form_url, extra_context)
