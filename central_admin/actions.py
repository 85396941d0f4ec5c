"""What every admin POST action shares: a permission check, and the way back."""

from typing import TypeVar

from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse

M = TypeVar("M", bound=models.Model)


def object_for_change(
    request: HttpRequest, model: type[M], pk: object, permission: str | None = None
) -> M:
    """The object, if the user has `permission` (default: change such objects); else 403.

    An unknown object is 404.
    """
    opts = model._meta
    if not request.user.has_perm(permission or f"{opts.app_label}.change_{opts.model_name}"):
        raise PermissionDenied
    return get_object_or_404(model, pk=pk)


def change_page(obj: models.Model) -> HttpResponseRedirect:
    """Back to the object's admin page, where the action's message is shown."""
    return HttpResponseRedirect(reverse(admin_urlname(obj._meta, "change"), args=[obj.pk]))
