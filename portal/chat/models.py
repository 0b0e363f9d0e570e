"""Conversations and their messages, and arena battles with their votes."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    """A chat thread owned by a user (or, in demo mode, by an anonymous session)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    # Anonymous demo chats are keyed by the session so that a visitor sees only their own.
    session_key = models.CharField(max_length=64, blank=True, db_index=True)
    title = models.CharField(max_length=200, default="New chat")
    model_name = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text="Sampling fields and response_format, as the last answer sent them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class MessageRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class AnswerStatus(models.TextChoices):
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped by the user"
    ERROR = "error", "Failed"


class AnswerFormat(models.TextChoices):
    TEXT = "text", "Text (Markdown)"
    JSON = "json", "JSON"


class Message(models.Model):
    """One turn; assistant turns carry the figures shown under the answer."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=AnswerStatus.choices, default=AnswerStatus.COMPLETE)
    # JSON answers are shown as plain text: Markdown would mangle their `*` and `_`.
    answer_format = models.CharField(max_length=8, choices=AnswerFormat.choices, default=AnswerFormat.TEXT)
    model_name = models.CharField(max_length=200, blank=True)
    worker_identity = models.CharField(max_length=255, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class ArenaBattle(models.Model):
    """Two models answering one prompt side by side; in anonymous mode names stay hidden until the vote."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="arena_battles",
    )
    session_key = models.CharField(max_length=64, blank=True, db_index=True)
    prompt = models.TextField()
    model_a = models.CharField(max_length=200)
    model_b = models.CharField(max_length=200)
    anonymous = models.BooleanField(default=False)
    answer_a = models.TextField(blank=True)
    answer_b = models.TextField(blank=True)
    figures = models.JSONField(default=dict, blank=True, help_text="Per side: tokens, TTFT, worker.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model_a} vs {self.model_b}"


class VoteChoice(models.TextChoices):
    A = "a", "A is better"
    B = "b", "B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both are bad"


class ArenaVote(models.Model):
    """The verdict on one battle; one vote per battle keeps the leaderboard honest."""

    battle = models.OneToOneField(ArenaBattle, on_delete=models.CASCADE, related_name="vote")
    choice = models.CharField(max_length=16, choices=VoteChoice.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.battle}: {self.choice}"
