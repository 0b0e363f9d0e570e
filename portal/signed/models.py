"""What the signed API stores: the signatures it accepted, for the replay guard."""

from __future__ import annotations

from django.db import models


class SeenSignature(models.Model):
    """A signature accepted once; a second insert of the same (app, key) is a replay.

    Rows older than twice SIGNED_TIMESTAMP_WINDOW are swept: a request carrying
    such a signature is refused by its timestamp before it reaches the guard.
    """

    app_id = models.CharField(max_length=128)
    replay_key = models.CharField(max_length=64, help_text="SHA-256 (hex) of the signature.")
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["app_id", "replay_key"], name="signed_signature_seen_once"),
        ]

    def __str__(self) -> str:
        return f"{self.app_id}:{self.replay_key[:12]}"
