"""The portal's pages for web users (session login)."""

from django.urls import path
from django.views.generic import RedirectView

from portal.views.alerts import acknowledge
from portal.views.chart import chart
from portal.views.commands import send_command
from portal.views.device_list import device_list
from portal.views.device_page import device_page
from portal.views.export import export_csv
from portal.views.live import live

app_name = "portal"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="portal:devices", permanent=False)),
    path("devices/", device_list, name="devices"),
    path("devices/<int:device_id>/", device_page, name="device"),
    path("devices/<int:device_id>/live", live, name="live"),
    path("devices/<int:device_id>/chart.svg", chart, name="chart"),
    path("devices/<int:device_id>/export.csv", export_csv, name="export"),
    path("devices/<int:device_id>/commands", send_command, name="send_command"),
    path(
        "devices/<int:device_id>/alerts/<int:alert_id>/ack", acknowledge, name="acknowledge_alert"
    ),
]
