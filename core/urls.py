"""URL map: the admin for now; the device and user APIs come with the API issue."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
