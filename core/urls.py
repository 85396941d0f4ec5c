"""URL map: health probes, the admin, session login for web users, and the versioned API."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from api.v1 import api
from core.health import healthz, readyz

urlpatterns = [
    # Until the web portal exists, the site's front page is the API documentation.
    path("", RedirectView.as_view(url="/api/v1/docs", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", api.urls),
]
