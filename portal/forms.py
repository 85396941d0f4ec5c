"""The command form: the same rules as the JSON API's CommandIn, with messages for people."""

import json
from typing import Any

from django import forms
from django.core.validators import RegexValidator

from api.schemas import without_nul

MAX_ARGS_BYTES = 8192


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


class CommandForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                "Use letters, digits and _ . : - (starting with a letter or digit).",
            )
        ],
    )
    args = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"delay": 5}'}),
        help_text="Optional: a JSON object.",
    )

    def clean_args(self) -> dict[str, Any]:
        text = self.cleaned_data["args"].strip()
        if not text:
            return {}
        if len(text.encode()) > MAX_ARGS_BYTES:
            raise forms.ValidationError(f"Arguments may be at most {MAX_ARGS_BYTES} bytes.")
        try:
            value = without_nul(json.loads(text, parse_constant=_no_constants))
        except ValueError as exc:
            raise forms.ValidationError(f"Arguments are not valid JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Arguments must be a JSON object, like {"delay": 5}.')
        return value
