from __future__ import annotations

from django.contrib import admin

from registry.admin_request_log import FIELDS, RequestLogWarningAdmin
from teams.models import Team


@admin.register(Team)
class TeamAdmin(RequestLogWarningAdmin):
    list_display = (
        "name", "daily_tokens", "monthly_tokens", "monthly_budget_usd", "all_models", "request_log",
    )  # fmt: skip
    list_filter = ("log_requests",)
    search_fields = ("name",)
    filter_horizontal = ("members", "allowed_models")
    fieldsets = (
        (None, {"fields": ("name", "members")}),
        ("Models", {"fields": ("all_models", "allowed_models")}),
        ("Budgets", {"fields": ("daily_tokens", "monthly_tokens", "monthly_budget_usd")}),
        ("Request log", {"fields": FIELDS}),
    )
