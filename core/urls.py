"""URL map: health probes, the admin, session login, the versioned API and the portal."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
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
    # Sign in and out, and change one's own password. No self-service password reset:
    # it needs outgoing mail, which the cluster does not configure; admins set
    # passwords on the user's admin page (docs/security.md).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", unknown_endpoint),
    path("", include("portal.urls")),
]
