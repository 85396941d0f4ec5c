"""The cluster page: app nodes as each HAProxy sees them, Celery's queue and workers,
shard lag.

The three sources are asked at the same time (the balancers and Celery in threads,
the shards by fan-out), each with a short timeout, so a dead part costs about
two seconds at most and is shown as unreachable; the page itself never fails.
"""

from concurrent.futures import ThreadPoolExecutor

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from central_admin.haproxy_status import read_all_haproxy
from central_admin.queue_status import WorkersStatus, read_queue, read_workers
from central_admin.shard_figures import all_figures
from routers.registry import serving_shards


def _celery() -> tuple:
    queue = read_queue()
    if queue.error:  # no broker: a ping would only wait for it
        return queue, WorkersStatus(error="broker unreachable")
    return queue, read_workers()


@require_GET
def cluster_page(request: HttpRequest) -> HttpResponse:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cluster-page") as pool:
        balancers = pool.submit(read_all_haproxy)
        celery = pool.submit(_celery)
        shards = all_figures(serving_shards())
        queue, workers = celery.result()
        context = {
            **admin.site.each_context(request),
            "title": "Cluster",
            "balancers": balancers.result(),
            "queue": queue,
            "workers": workers,
            "shards": [shards[alias] for alias in sorted(shards)],
        }
    return TemplateResponse(request, "central_admin/cluster.html", context)
