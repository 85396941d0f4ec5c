"""The central admin's pages beyond the model admin (mounted at /admin/fleet/)."""

app_name = "central_admin"

urlpatterns: list = []
