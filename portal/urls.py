"""The portal's pages for web users (session login)."""

from django.urls import path
from django.views.generic import RedirectView

app_name = "portal"

urlpatterns = [
    path("", RedirectView.as_view(url="/devices/", permanent=False)),
    path("devices/", RedirectView.as_view(url="/api/v1/docs", permanent=False), name="devices"),
]
