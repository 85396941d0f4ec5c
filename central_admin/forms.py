"""Forms of the admin's own actions; each validates before anything is written."""

import json

from django import forms

from core.models import Rebalance

# The API's rules (api.schemas.CommandIn), so a command made here is one a device could get.
COMMAND_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_ARGS_BYTES = 16 * 1024
MAX_EXPIRY = 30 * 24 * 3600


class CommandForm(forms.Form):
    name = forms.RegexField(regex=COMMAND_NAME, max_length=64)
    args = forms.CharField(required=False, initial="{}", widget=forms.TextInput)
    expires_in = forms.IntegerField(required=False, min_value=1, max_value=MAX_EXPIRY)

    def clean_args(self) -> dict:
        text = self.cleaned_data["args"].strip() or "{}"
        if len(text.encode()) > MAX_ARGS_BYTES:
            raise forms.ValidationError(f"args is larger than {MAX_ARGS_BYTES} bytes")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"args is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("args must be a JSON object")
        return value


class WeightForm(forms.Form):
    weight = forms.IntegerField(min_value=0, max_value=100_000)


class DrainForm(forms.Form):
    include_pinned = forms.BooleanField(required=False)
    cost = forms.ChoiceField(
        choices=Rebalance.Cost.choices, initial=Rebalance.Cost.ROWS, required=False
    )


def form_errors(form: forms.Form) -> str:
    """One line naming each bad field, for an admin message."""
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
