"""From a verified assertion to a Django user, and the one entry point both integrations share."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldError, ImproperlyConfigured, ValidationError
from django.db import IntegrityError, transaction

from .exceptions import AssertionMissing, UserRejected
from .settings import SETTINGS_NAME, api_settings
from .verification import verify_assertion

_INT = re.compile(r"[0-9]{1,18}")


def get_assertion(request: Any) -> str | None:
    """The raw assertion from a Django (or DRF) request, or None when the header is absent/empty."""
    value = request.META.get(api_settings.assertion_meta_key)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value or not value.strip():
        return None
    return value.strip()


def authenticate_assertion(token: str | None) -> tuple[Any, dict[str, Any]]:
    """``(user, claims)`` for a valid assertion; ``AssertionRejected`` otherwise."""
    if not token:
        raise AssertionMissing()
    claims = verify_assertion(token)
    return get_user(claims), claims


def get_user(claims: dict[str, Any]) -> Any:
    claim, field = api_settings.USER_ID_CLAIM, api_settings.USER_ID_FIELD
    user_id = claims.get(claim)
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)) or user_id == "":
        raise UserRejected(f"authgate assertion has no user id claim '{claim}'", "user_not_found")

    User = get_user_model()
    try:
        user = User._default_manager.get(**{field: user_id})
    except FieldError as exc:
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}['USER_ID_FIELD'] {field!r} is not a field of {User.__name__}"
        ) from exc
    except (User.DoesNotExist, ValueError, TypeError, ValidationError):
        # ValueError/ValidationError: a sub such as "abc" for an integer id field names no user.
        if not api_settings.AUTO_CREATE_USERS:
            raise UserRejected("authgate assertion user not found", "user_not_found") from None
        user = _create_user(User, field, user_id)

    # Same rule as Django's ModelBackend and simplejwt: a deactivated account is locked out even
    # while the gateway still holds a valid credential for it.
    if not getattr(user, "is_active", True):
        raise UserRejected("authgate assertion user inactive", "user_inactive")
    return user


def _create_user(User: Any, field: str, user_id: Any) -> Any:
    pk_name = User._meta.pk.name
    if field in ("pk", pk_name):
        # Only an integer subject can become a primary key; "alice" names no row we could create.
        if not _INT.fullmatch(str(user_id)):
            raise UserRejected("authgate assertion user not found", "user_not_found")
        user = User(pk=int(user_id))
        username_field = getattr(User, "USERNAME_FIELD", None)
        if username_field and username_field != pk_name:
            # Usernames are unique; give the account one that says where it came from.
            setattr(user, username_field, f"authgate-{user_id}")
    else:
        user = User(**{field: str(user_id)})
    user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save(force_insert=True)
    except IntegrityError:
        # Usually a concurrent request for the same new user won the race: use its row.
        try:
            return User._default_manager.get(**{field: user_id})
        except User.DoesNotExist:
            raise UserRejected("authgate assertion user could not be created", "user_not_found") from None
    return user
