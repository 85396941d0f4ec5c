"""A move job's progress as JSON, for the device page's script to poll."""

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from central_admin.device_page import UI_FINAL_PHASES
from core.models import MoveJob
from shards.moves.report import rows_moved


@require_GET
def move_progress(request: HttpRequest, job_id: int) -> JsonResponse:
    job = get_object_or_404(MoveJob, pk=job_id)
    return JsonResponse(
        {
            "job": job.pk,
            "device": job.device_id,
            "source": job.source_id,
            "target": job.target_id,
            "phase": job.phase,
            "phase_label": job.get_phase_display(),
            "rows_moved": rows_moved(job),
            "error": job.error,
            "final": job.phase in UI_FINAL_PHASES,
        },
        headers={"Cache-Control": "no-store"},
    )
