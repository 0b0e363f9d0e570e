"""The deployment form's widgets: the nodes' catalogue as a visible picker, and labels as key=value rows."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.datastructures import MultiValueDict

from fleet.selectors import CatalogueEntry
from registry.admin_workers import readable_bytes

# What `runagent --labels` can carry: no "," (it separates pairs) and no "=" in a key.
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
Pairs = list[tuple[str, str]]


class CataloguePicker(forms.TextInput):
    """The model path, with a table of the online nodes' models below it: "Use" fills the path."""

    template_name = "fleet/widgets/catalogue_picker.html"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"size": 60, **(attrs or {})})
        self.entries: list[CatalogueEntry] = []

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["entries"] = [
            {**asdict(e), "weights": readable_bytes(e.bytes), "needs": readable_bytes(e.memory)}
            for e in self.entries
        ]
        return context


class LabelsWidget(forms.Widget):
    """One key and one value input per label, and a blank row; the page's script adds more rows."""

    template_name = "fleet/widgets/labels.html"

    def value_from_datadict(self, data: Mapping[str, Any], files: Any, name: str) -> Pairs | str | None:
        if isinstance(data, MultiValueDict) and f"{name}_key" in data:
            keys, values = data.getlist(f"{name}_key"), data.getlist(f"{name}_value")
            return list(zip(keys, (values + [""] * len(keys))[: len(keys)], strict=True))
        return data.get(name)  # the JSON object itself (a script, or the old text box)

    def value_omitted_from_data(self, data: Mapping[str, Any], files: Any, name: str) -> bool:
        return f"{name}_key" not in data and name not in data

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        if isinstance(value, dict):
            rows = [(str(k), str(v)) for k, v in value.items()]
        elif isinstance(value, list):
            rows = [(str(k), str(v)) for k, v in value]
        else:
            rows = []
        context["rows"] = [*rows, ("", "")]
        return context


class LabelsField(forms.Field):
    """Node labels as key=value rows, stored as the JSON object the model field holds."""

    widget = LabelsWidget

    def to_python(self, value: Any) -> dict[str, str]:
        if value in (None, ""):
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValidationError("Labels: key=value pairs, or a JSON object.") from None
            if not isinstance(value, dict):
                raise ValidationError("Labels: key=value pairs, or a JSON object.")
            value = list(value.items())
        return _labels(value)

    def prepare_value(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) and value.startswith("{") else value

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return dict(initial or {}) != self.to_python(data)
        except ValidationError:
            return True


def _labels(pairs: Pairs) -> dict[str, str]:
    """Each non-blank row a label; a row with a value and no key, a bad key or a repeated one is refused."""
    labels: dict[str, str] = {}
    errors = []
    for key, value in ((str(k).strip(), str(v).strip()) for k, v in pairs):
        if not key and not value:
            continue
        if not key:
            errors.append(f"The value {value!r} has no key.")
        elif not LABEL_KEY.match(key):
            errors.append(f"{key!r} is not a label key: letters, digits and . _ / - only.")
        elif key in labels:
            errors.append(f"The key {key!r} is given twice.")
        elif "," in value:
            errors.append(f"The value of {key!r} cannot hold a comma.")
        else:
            labels[key] = value
    if errors:
        raise ValidationError(errors)
    return labels
