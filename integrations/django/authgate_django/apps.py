from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class AuthgateConfig(AppConfig):
    """Optional: listing "authgate_django" in INSTALLED_APPS adds a system check of the settings,
    so `manage.py check` (and runserver) report a misconfiguration before the first request."""

    name = "authgate_django"
    verbose_name = "authgate"

    def ready(self) -> None:
        checks.register(check_settings, "authgate")


def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from django.contrib.auth import get_user_model
    from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured

    from .keys import load_static_key
    from .settings import api_settings

    try:
        api_settings.validate()
        if api_settings.VERIFYING_KEY:
            load_static_key(api_settings.VERIFYING_KEY)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="authgate.E001")]
    field = api_settings.USER_ID_FIELD
    User = get_user_model()
    if field != "pk":
        try:
            User._meta.get_field(field)
        except FieldDoesNotExist:
            return [
                checks.Error(
                    f"AUTHGATE['USER_ID_FIELD'] {field!r} is not a field of {User.__name__}",
                    id="authgate.E002",
                )
            ]
    return []
