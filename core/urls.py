"""URL map: health probes, the admin, session login for web users, and the versioned API."""

from django.contrib import admin
from django.urls import include, path

from api.v1 import api
from core.health import healthz, readyz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", api.urls),
]
