"""The admin of a team's or an API key's request log switch: a warning wherever the log is on."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from registry.models import RequestLogSwitch

FIELDS = ("log_requests", "request_log_days")
WARNING = (
    "The request log of this {what} is on: the bodies of its requests and of their answers are kept "
    "for {days} day(s), readable by whoever may see its usage. They may hold personal or confidential data."
)


class RequestLogWarningAdmin(admin.ModelAdmin):
    """Warns on the change page of a row whose request log is on, and when a save switches it on."""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "GET":
            row = self.get_object(request, unquote(object_id))
            if isinstance(row, RequestLogSwitch) and row.log_requests:
                self.message_user(request, self._warning(row), level=messages.WARNING)
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.log_requests and "log_requests" in form.changed_data:
            self.message_user(request, self._warning(obj), level=messages.WARNING)

    def _warning(self, row: RequestLogSwitch) -> str:
        return WARNING.format(what=self.model._meta.verbose_name, days=row.log_days)

    @admin.display(description="Request log")
    def request_log(self, row: RequestLogSwitch) -> str:
        if not row.log_requests:
            return "—"
        return format_html('<span class="request-log-on">⚠ on, {} day(s)</span>', row.log_days)
