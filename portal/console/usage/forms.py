"""The usage page's filters: a GET form that resolves to one `UsageFilters` value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Model, Q

from registry.models import ApiKey, AppCredential
from registry.services.rollups import utc_today
from teams.models import Team

DEFAULT_DAYS = 30
# The daily series has one point per day, and an export reads every record of the range: a bound
# keeps the page, its queries and each export finite.
MAX_DAYS = 366
# No usage predates it. With ends clamped to today, every day the page and the exports compute
# (a range's first and last instants, a default start) stays inside the calendar: year 1 and
# 9999-12-31 + 1 day overflowed (a 500, and an export that sent its headers and then hung).
EARLIEST_DAY = date(2000, 1, 1)
SOURCES = [("", "any"), ("api", "api"), ("signed", "signed"), ("chat", "chat")]
RANKS = [("requests", "requests"), ("tokens", "tokens")]


@dataclass(frozen=True)
class UsageFilters:
    """What the charts and exports show: UTC days `start`..`end` (both included) and the rest."""

    start: date
    end: date
    model: str = ""
    source: str = ""
    api_key_id: int | None = None
    app_credential_id: int | None = None
    user_id: int | None = None
    team_id: int | None = None
    rank: str = "requests"

    def q(self) -> Q:
        """The filters other than dates, for `UsageRecord` and `UsageDaily` alike (same field names)."""
        q = Q()
        for field, value in (
            ("model_name", self.model), ("source", self.source), ("api_key_id", self.api_key_id),
            ("app_credential_id", self.app_credential_id), ("user_id", self.user_id),
            ("team_id", self.team_id),
        ):  # fmt: skip
            if value not in ("", None):
                q &= Q(**{field: value})
        return q

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def suggested(choices: str, placeholder: str) -> forms.TextInput:
    """A text box offering the page's datalist `usage-<choices>` (filter_choices), still free to type in."""
    return forms.TextInput(
        attrs={"list": f"usage-{choices}", "placeholder": placeholder, "autocomplete": "off"}
    )


class UsageFilterForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    model = forms.CharField(required=False, max_length=200, widget=suggested("models", "any model"))
    source = forms.ChoiceField(required=False, choices=SOURCES)
    key = forms.CharField(
        required=False, max_length=40, help_text="Key prefix, or #id.", widget=suggested("keys", "any key")
    )
    app = forms.CharField(
        required=False, max_length=130, help_text="App id, or #id.", widget=suggested("apps", "any app")
    )
    user = forms.CharField(
        required=False, max_length=150, help_text="Username, or #id.", widget=suggested("users", "any user")
    )
    team = forms.CharField(
        required=False, max_length=101, help_text="Team name, or #id.", widget=suggested("teams", "any team")
    )
    rank = forms.ChoiceField(required=False, choices=RANKS, label="Rank by")

    def clean_start(self) -> date | None:
        start: date | None = self.cleaned_data["start"]
        if start is not None and start > utc_today():
            raise forms.ValidationError(f"The start is after today ({utc_today().isoformat()}, UTC).")
        return _not_before_earliest(start)

    def clean_end(self) -> date | None:
        """A day after today holds no usage yet: clamp it, so that "until the month's end" works."""
        end = _not_before_earliest(self.cleaned_data["end"])
        return None if end is None else min(end, utc_today())

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "start" not in data or "end" not in data:  # a date was refused: nothing to default from
            return data
        end = data["end"] or utc_today()
        start = data["start"] or max(end - timedelta(days=DEFAULT_DAYS - 1), EARLIEST_DAY)
        if start > end:
            raise forms.ValidationError("The start is after the end.")
        if (end - start).days >= MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data

    def clean_key(self) -> int | None:
        return _resolve(self.cleaned_data["key"], ApiKey, "prefix", "API key")

    def clean_app(self) -> int | None:
        return _resolve(self.cleaned_data["app"], AppCredential, "app_id", "app credential")

    def clean_user(self) -> int | None:
        return _resolve(self.cleaned_data["user"], get_user_model(), "username", "user")

    def clean_team(self) -> int | None:
        return _resolve(self.cleaned_data["team"], Team, "name", "team")

    def filters(self) -> UsageFilters:
        """The filters of a valid form."""
        data = self.cleaned_data
        return UsageFilters(
            start=data["start"],
            end=data["end"],
            model=data["model"].strip(),
            source=data["source"],
            api_key_id=data["key"],
            app_credential_id=data["app"],
            user_id=data["user"],
            team_id=data["team"],
            rank=data["rank"] or "requests",
        )


def _not_before_earliest(day: date | None) -> date | None:
    if day is not None and day < EARLIEST_DAY:
        raise forms.ValidationError(f"Choose a day from {EARLIEST_DAY.isoformat()} on.")
    return day


def _resolve(value: str, model: type[Model], field: str, noun: str) -> int | None:
    """An id from "#<id>" (kept after its row is deleted) or from the row's natural key."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("#"):
        if not value[1:].isdigit():
            raise forms.ValidationError(f"#{value[1:]} is not an id.")
        return int(value[1:])
    found = model._default_manager.filter(**{field: value}).values_list("pk", flat=True).first()
    if found is None:
        raise forms.ValidationError(f"No {noun} has the {field} {value!r}.")
    return int(found)
