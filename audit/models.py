"""The audit trail: who changed what, when, through which door, and the row before and after."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditSource(models.TextChoices):
    ADMIN = "admin", "Admin"
    COMMAND = "command", "Management command"


class AuditEntry(models.Model):
    """One change to one row: created, changed, deleted, or an admin action (drain, restart...).

    `before` and `after` hold the row's fields (None: it did not exist); a
    secret's value is never stored, only that it changed.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=200, help_text="The username then, or the command and OS user.")
    source = models.CharField(max_length=16, choices=AuditSource.choices)
    action = models.CharField(max_length=64, help_text="create, change, delete, or the admin action's name.")
    object_type = models.CharField(max_length=100, help_text="app_label.model")
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "at"], name="audit_type_at")]

    def __str__(self) -> str:
        return (
            f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.object_type} #{self.object_id}"
        )
