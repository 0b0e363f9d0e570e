"""Teams: people (Django users), their keys and app credentials, the models they may use, their budgets."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from registry.models import RequestLogSwitch, ServedModel

BUDGET_HELP = "Empty: no such budget."


class Team(RequestLogSwitch):
    """A group of people and clients that share budgets: tokens a day and a month, dollars a month.

    A budget counts every request of the team's keys, app credentials and
    members' chats, reserved before dispatch and settled after (the limiter's
    reserve-then-settle path), in UTC days and calendar months.
    """

    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="teams")
    all_models = models.BooleanField(
        default=True, help_text="Every model, present and future; otherwise only the models below."
    )
    allowed_models = models.ManyToManyField(
        ServedModel,
        blank=True,
        related_name="teams",
        help_text="The models the team's keys and credentials may use when it is not for all models.",
    )
    daily_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text=BUDGET_HELP)
    monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text=BUDGET_HELP)
    monthly_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Dollars a month, from the served models' prices per million tokens. " + BUDGET_HELP,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("manage_every_team", "Manage the API keys and app credentials of every team")]

    def __str__(self) -> str:
        return self.name
