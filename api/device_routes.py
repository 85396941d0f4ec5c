"""Endpoints a device calls with its bearer token (and enrolment, with the fleet key).

A steady-state call makes no directory query: the token and the placement come
from caches, everything else from the device's shard.
"""

from django.http import HttpRequest
from ninja import Router, Status
from ninja.errors import HttpError
from ninja.security import HttpBearer

from api.schemas import (
    READINGS_JSON,
    CommandOut,
    CommandResultIn,
    CommandsOut,
    EnrollIn,
    EnrollOut,
    ErrorOut,
    UploadAccepted,
    UploadIn,
    UploadReceipt,
)
from core.client_ip import client_ip
from core.credentials import device_id_for_token
from core.provisioning import enroll
from core.throttle_device import count_failed_authentication, limit_device_requests
from routers.placement import shard_for_device
from shards.commands import deliver_pending, report_result
from shards.ingest import stage_payload
from shards.models import Upload


class DeviceToken(HttpBearer):
    """`Authorization: Bearer <token>`; the request carries `device_id` and `shard_alias`."""

    def __call__(self, request: HttpRequest) -> int | None:
        """Reads the header itself: ninja's parser would log a value with another scheme.

        Any other scheme is unauthenticated; each failure counts against the client.
        """
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        device_id = None
        if scheme.lower() == "bearer" and token.strip():
            device_id = self.authenticate(request, token.strip())
        if device_id is None:
            count_failed_authentication(client_ip(request))
        return device_id

    def authenticate(self, request: HttpRequest, token: str) -> int | None:
        device_id = device_id_for_token(token)
        if device_id is not None:
            request.device_id = device_id
            # For the request log; a cache hit, and the route's own lookup is another.
            request.shard_alias = shard_for_device(device_id)
            limit_device_requests(device_id)
        return device_id


router = Router(tags=["device"], auth=DeviceToken())
ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut, 503: ErrorOut}


@router.post("/enroll", auth=None, response={201: EnrollOut, **ERRORS})
def enroll_device(request: HttpRequest, payload: EnrollIn):
    """Self-enrolment with the fleet's provisioning key; the token is shown this once."""
    enrollment = enroll(
        payload.provisioning_key, payload.serial, payload.name, client=client_ip(request)
    )
    return Status(201, {"device_id": enrollment.device_id, "token": enrollment.token})


@router.post("/uploads", response={202: UploadAccepted, **ERRORS, 413: ErrorOut})
def upload_batch(request: HttpRequest, payload: UploadIn):
    """Store a batch durably and queue its import; answers with the commands waiting.

    Retrying with the same batch_id returns the first answer's upload_id and
    writes nothing again, so a device may resend whenever it is unsure.
    """
    staged = stage_payload(
        request.device_id,
        payload.batch_id,
        READINGS_JSON.dump_json(payload.readings).decode(),
        len(payload.readings),
    )
    commands = deliver_pending(request.device_id, any_open=staged.commands_open)
    return Status(
        202,
        {"upload_id": staged.upload.pk, "status": staged.upload.status, "commands": commands},
    )


@router.get("/uploads/{upload_id}", response={200: UploadReceipt, **ERRORS})
def upload_receipt(request: HttpRequest, upload_id: int):
    upload = Upload.objects.for_device(request.device_id).filter(pk=upload_id).first()
    if upload is None:
        raise HttpError(404, "no such upload for this device")
    stored = upload.stored_count
    return {
        "upload_id": upload.pk,
        "status": upload.status,
        "readings": upload.reading_count,
        "stored": stored,
        "duplicates": None if stored is None else upload.reading_count - stored,
        "received_at": upload.received_at,
        "imported_at": upload.imported_at,
        "error": upload.error or None,
    }


@router.get("/commands", response={200: CommandsOut, **ERRORS})
def poll_commands(request: HttpRequest):
    """Commands to act on now; each is marked sent and counted as a delivery."""
    return {"commands": deliver_pending(request.device_id)}


@router.post("/commands/{command_id}/result", response={200: CommandOut, **ERRORS})
def command_result(request: HttpRequest, command_id: int, payload: CommandResultIn):
    return report_result(request.device_id, command_id, payload.status, payload.result)
