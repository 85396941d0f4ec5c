"""URL map: the admin, session login for web users, and the versioned API."""

from django.contrib import admin
from django.urls import include, path

from api.v1 import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", api.urls),
]
