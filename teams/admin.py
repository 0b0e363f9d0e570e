from __future__ import annotations

from django.contrib import admin

from teams.models import Team


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "daily_tokens", "monthly_tokens", "monthly_budget_usd", "all_models")
    search_fields = ("name",)
    filter_horizontal = ("members", "allowed_models")
    fieldsets = (
        (None, {"fields": ("name", "members")}),
        ("Models", {"fields": ("all_models", "allowed_models")}),
        ("Budgets", {"fields": ("daily_tokens", "monthly_tokens", "monthly_budget_usd")}),
    )
