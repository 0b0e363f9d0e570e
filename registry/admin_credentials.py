"""Admin for app credentials: the secret is shown masked, a new one in full only once."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from registry.models import AppCredential
from registry.services.credentials import (
    decrypt_secret,
    encrypt_secret,
    forget_cached_credential,
    generate_secret,
    mask_secret,
)
from signing.sm2 import InvalidKey, normalize_public_key
from teams.admin_scoping import TeamScopedAdmin


class AppCredentialForm(forms.ModelForm):
    new_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to generate one when adding (or to keep the current one when editing).",
    )
    regenerate_secret = forms.BooleanField(required=False, help_text="Generate a new secret on save.")

    class Meta:
        model = AppCredential
        fields = [
            "app_id",
            "name",
            "sm2_public_key",
            "allow_plain",
            "allowed_pipelines",
            "enabled",
            "requests_per_minute",
            "tokens_per_minute",
            "max_in_flight",
            "team",
        ]

    def clean_sm2_public_key(self) -> str:
        value = self.cleaned_data.get("sm2_public_key") or ""
        try:
            return normalize_public_key(value) if value else ""
        except InvalidKey as exc:
            raise forms.ValidationError(str(exc)) from exc


@admin.register(AppCredential)
class AppCredentialAdmin(TeamScopedAdmin):
    form = AppCredentialForm
    list_display = ["app_id", "name", "masked_secret", "enabled", "allow_plain", "created_at", "last_used_at"]
    list_filter = ["enabled", "allow_plain"]
    search_fields = ["app_id", "name"]
    readonly_fields = ["masked_secret", "created_at", "last_used_at"]

    @admin.display(description="secret")
    def masked_secret(self, obj: AppCredential) -> str:
        if not obj.secret_ciphertext:
            return "—"
        try:
            return mask_secret(decrypt_secret(obj.secret_ciphertext))
        except Exception:
            return "(cannot be decrypted with the current SECRET_KEY)"

    def save_model(self, request: HttpRequest, obj: AppCredential, form: Any, change: bool) -> None:
        given = form.cleaned_data.get("new_secret")
        shown: str | None = None
        if not change or given or form.cleaned_data.get("regenerate_secret"):
            secret = given or generate_secret()
            obj.secret_ciphertext = encrypt_secret(secret)
            shown = None if given else secret
        super().save_model(request, obj, form, change)
        forget_cached_credential(obj.app_id)
        if shown:
            # The only time the generated secret is visible: it is stored encrypted.
            self.message_user(
                request,
                f"Secret for {obj.app_id}: {shown} — copy it now, it is not shown again.",
                messages.WARNING,
            )
