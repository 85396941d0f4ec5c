"""Posting the Django admin's change forms back as a browser would."""

from typing import Any


def _field_values(form: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in form.fields:
        key = form.add_prefix(name)
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                values[key] = "on"  # an unticked box is simply absent
        else:
            values[key] = "" if value is None else value
    return values


def admin_form_data(page: Any) -> dict[str, Any]:
    """The change page's current values (form and inlines), ready to post back changed."""
    assert page.status_code == 200, page.status_code
    data = _field_values(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update(_field_values(formset.management_form))
        for form in formset.forms:
            data.update(_field_values(form))
    return data
