"""The central admin's pages beyond the model admin (mounted at /admin/fleet/).

Staff only, and like every admin page each asks a permission: staff alone grants nothing.
"""

from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.urls import path

from central_admin.cluster import cluster_page
from central_admin.moves import move_progress

app_name = "central_admin"

urlpatterns = [
    path(
        "cluster/",
        admin.site.admin_view(
            permission_required("core.view_shard", raise_exception=True)(cluster_page)
        ),
        name="cluster",
    ),
    path(
        "moves/<int:job_id>/",
        admin.site.admin_view(
            permission_required("core.view_movejob", raise_exception=True)(move_progress)
        ),
        name="move_progress",
    ),
]
