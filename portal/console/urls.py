"""Console pages, mounted under /admin/console/ (staff only, inside the admin's look)."""

from django.urls import URLPattern, URLResolver, include, path

from portal.console import views

app_name = "console"

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.dashboard, name="dashboard"),
    path("fleet.json", views.fleet, name="fleet"),
    path("usage/", include("portal.console.usage.urls")),
]
