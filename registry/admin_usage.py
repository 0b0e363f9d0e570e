"""Admin for the per-day usage rollup's days: read-only, to see which days are final and prunable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from registry.models import UsageRollupDay


@admin.register(UsageRollupDay)
class UsageRollupDayAdmin(admin.ModelAdmin):
    """The roll-up job owns these rows: nobody adds, edits or deletes them here."""

    list_display = ("day", "final", "records", "last_record_id", "updated_at")
    list_filter = ("final",)
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
