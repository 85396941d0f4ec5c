"""The central admin's pages beyond the model admin (mounted at /admin/fleet/), staff only."""

from django.contrib import admin
from django.urls import path

from central_admin.cluster import cluster_page
from central_admin.moves import move_progress

app_name = "central_admin"

urlpatterns = [
    path("cluster/", admin.site.admin_view(cluster_page), name="cluster"),
    path("moves/<int:job_id>/", admin.site.admin_view(move_progress), name="move_progress"),
]
