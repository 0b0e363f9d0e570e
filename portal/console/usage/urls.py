"""/admin/console/usage/: the charts, the two CSV exports, the request log's search ("console:usage")."""

from django.urls import path

from portal.console.usage import views

app_name = "usage"

urlpatterns = [
    path("", views.usage, name="index"),
    path("records.csv", views.export_records, name="records-csv"),
    path("daily.csv", views.export_daily, name="daily-csv"),
    path("log/", views.request_log, name="log"),
]
