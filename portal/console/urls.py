"""Console pages, mounted under /admin/console/ (staff only, inside the admin's look)."""

from django.urls import URLPattern, URLResolver

app_name = "console"

urlpatterns: list[URLPattern | URLResolver] = []
