"""Saving or deleting a device or a credential forgets its cached credentials on commit.

Together with the querysets' update() in core.models this covers every way the ORM
changes them (the admin's forms, actions and delete pages, management commands,
enrolment, the API), so a change bites on every node within CREDENTIAL_LOCAL_TTL.
"""

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from core.credential_cache import forget_after_commit
from core.models import Device, DeviceCredential


@receiver(post_save, sender=Device, dispatch_uid="core.forget_device_credentials")
def forget_credentials_of_saved_device(sender: type, instance: Device, using: str, **kw: Any):
    key_ids = DeviceCredential.objects.using(using).filter(device_id=instance.pk)
    forget_after_commit(key_ids.values_list("key_id", flat=True), using=using)


@receiver(post_save, sender=DeviceCredential, dispatch_uid="core.forget_saved_credential")
@receiver(post_delete, sender=DeviceCredential, dispatch_uid="core.forget_deleted_credential")
def forget_changed_credential(sender: type, instance: DeviceCredential, using: str, **kw: Any):
    forget_after_commit([instance.key_id], using=using)
