"""URL map: health probes, the admin, session login, the versioned API and the portal."""

from django.contrib import admin
from django.urls import include, path, re_path

from api.errors import unknown_endpoint
from api.v1 import api
from core.health import healthz, readyz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # The central admin's own pages (cluster, shards, moves) sit beside the model admin.
    path("admin/fleet/", include("central_admin.urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", unknown_endpoint),
    path("", include("portal.urls")),
]
