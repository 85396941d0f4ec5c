"""The central admin: one module per page family; importing them registers the ModelAdmins."""

from django.contrib import admin

from central_admin import devices, jobs, shard_admin, users  # noqa: F401  (registration)

admin.site.site_header = "Fleet admin"
admin.site.site_title = "Fleet admin"
# Adds the links to the cluster, shards and devices pages above the app list.
admin.site.index_template = "central_admin/index.html"
