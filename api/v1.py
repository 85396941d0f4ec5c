"""The /api/v1/ API: OpenAPI schema at /api/v1/openapi.json, docs at /api/v1/docs."""

from ninja import NinjaAPI

from api.body import JsonOnlyParser
from api.device_routes import router as device_router
from api.errors import install_error_handlers
from api.user_routes import router as user_router

api = NinjaAPI(
    title="Fleet cluster API",
    version="1",
    description=(
        "Devices authenticate with `Authorization: Bearer <token>`; web users with the"
        " Django session from /accounts/login/ (and a CSRF token on writes). Bodies are"
        " UTF-8 JSON sent as application/json (anything else is 415). Limits:"
        " at most UPLOAD_MAX_READINGS readings (default 5000) and UPLOAD_MAX_BYTES"
        " (default 2 MiB) per upload; timestamps from 2000-01-01 to one day ahead."
    ),
    urls_namespace="api-v1",
    parser=JsonOnlyParser(),
)
install_error_handlers(api)
api.add_router("/device", device_router)
api.add_router("/", user_router)
