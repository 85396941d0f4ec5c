"""Forms of the admin's own actions; each validates before anything is written."""

from django import forms

from core.models import Rebalance
from portal.forms import CommandForm

__all__ = ["CommandForm", "DrainForm", "WeightForm", "form_errors"]


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
