"""The command form of the portal and the admin: the JSON API's rules, with messages for people."""

from typing import Any

from django import forms
from django.core.validators import RegexValidator

from api.schemas import COMMAND_MAX_EXPIRY, COMMAND_NAME_PATTERN
from core.json_values import parse_json_text
from shards.commands import create_command
from shards.models import Command


class CommandForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        validators=[
            RegexValidator(
                COMMAND_NAME_PATTERN,
                "Use letters, digits and _ . : - (starting with a letter or digit).",
            )
        ],
    )
    args = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"delay": 5}'}),
        help_text="Optional: a JSON object.",
    )
    expires_in = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=COMMAND_MAX_EXPIRY,
        help_text="Seconds until it expires (default: a day).",
    )

    def clean_args(self) -> dict[str, Any]:
        text = self.cleaned_data["args"].strip()
        if not text:
            return {}
        try:
            value = parse_json_text(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Arguments {exc}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Arguments must be a JSON object, like {"delay": 5}.')
        return value

    def create(self, device_id: int, user_id: int | None) -> Command:
        """Queue the valid form's command on the device's shard, as sent by `user_id`."""
        data = self.cleaned_data
        return create_command(
            device_id,
            data["name"],
            data["args"],
            expires_in=data["expires_in"],
            created_by_id=user_id,
        )
