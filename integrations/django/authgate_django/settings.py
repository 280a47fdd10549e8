"""Settings for authgate_django, read from ``settings.AUTHGATE`` like simplejwt's ``SIMPLE_JWT``.

    from authgate_django.settings import api_settings
    api_settings.ISSUER

Values are validated together on first use, so a misconfiguration fails with one clear
``ImproperlyConfigured`` instead of as a confusing 401 later. ``override_settings`` (and anything
else that sends ``setting_changed``) reloads them in place: modules that imported
``api_settings`` keep a live object.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

SETTINGS_NAME = "AUTHGATE"

DEFAULTS: dict[str, Any] = {
    # The header authgate writes the assertion into (and strips from client requests).
    "ASSERTION_HEADER": "X-Auth-Assertion",
    # Where the gateway's admin listener serves its public keys; or, instead, one static key.
    "JWKS_URL": None,
    "VERIFYING_KEY": None,
    "ALGORITHMS": ("EdDSA", "ES256"),
    # Both required: an assertion minted for another upstream must not be accepted here.
    "ISSUER": None,
    "AUDIENCE": None,
    "LEEWAY": 5,
    "JWKS_CACHE_TTL": 300,
    "JWKS_TIMEOUT": 2,
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "sub",
    "AUTO_CREATE_USERS": False,
    # Middleware only: path prefixes that may be reached without an assertion.
    "EXEMPT_PATHS": (),
}

# What authgate signs with. Nothing else is accepted even if configured: "none" and the HMAC
# algorithms would let anyone who knows the verifying key (public, served by the gateway) mint
# assertions.
SUPPORTED_ALGORITHMS = ("EdDSA", "ES256")

_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


def _error(name: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{SETTINGS_NAME}[{name!r}] {problem}")


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    # bool is an int; True seconds is a typo, not a duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(name, "must be a number of seconds or a timedelta")
    if value < 0 or (value == 0 and not allow_zero):
        raise _error(name, "must be positive" if not allow_zero else "must not be negative")
    return float(value)


def _non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(name, "must be a non-empty string")
    return value


def validate(user_settings: Any, defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """The complete, normalised settings, or ImproperlyConfigured naming what is wrong."""
    if not isinstance(user_settings, dict):
        raise ImproperlyConfigured(f"settings.{SETTINGS_NAME} must be a dict")
    unknown = sorted(set(user_settings) - set(defaults))
    if unknown:
        # A typo such as "AUDIENCES" would otherwise silently fall back to a default.
        raise ImproperlyConfigured(
            f"Unknown {SETTINGS_NAME} setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(defaults)}"
        )
    v = {**defaults, **user_settings}

    header = v["ASSERTION_HEADER"]
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        # WSGI servers drop header names containing "_", so such a name would never arrive.
        raise _error("ASSERTION_HEADER", "must be a header name of letters, digits and '-'")

    jwks_url, pem = v["JWKS_URL"], v["VERIFYING_KEY"]
    if bool(jwks_url) == bool(pem):
        raise ImproperlyConfigured(
            f"Set exactly one of {SETTINGS_NAME}['JWKS_URL'] (the gateway's admin listener, e.g. "
            f"http://127.0.0.1:9090/.well-known/jwks.json) or {SETTINGS_NAME}['VERIFYING_KEY'] "
            "(the gateway's public key as a PEM string)"
        )
    if jwks_url:
        parts = urlsplit(jwks_url) if isinstance(jwks_url, str) else None
        # urllib would also open file:// and ftp:// URLs; keys come from the gateway over HTTP.
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise _error("JWKS_URL", "must be an http:// or https:// URL")
    if pem:
        if isinstance(pem, bytes):
            pem = pem.decode("ascii", "replace")
        if not isinstance(pem, str) or "-----BEGIN PUBLIC KEY-----" not in pem:
            raise _error("VERIFYING_KEY", "must be a PEM public key ('-----BEGIN PUBLIC KEY-----')")
        v["VERIFYING_KEY"] = pem

    algorithms = v["ALGORITHMS"]
    if isinstance(algorithms, str):
        algorithms = (algorithms,)
    if not isinstance(algorithms, (list, tuple)) or not algorithms:
        raise _error("ALGORITHMS", f"must list at least one of {', '.join(SUPPORTED_ALGORITHMS)}")
    for alg in algorithms:
        if alg in SUPPORTED_ALGORITHMS:
            continue
        if isinstance(alg, str) and (alg.lower() == "none" or alg.upper().startswith("HS")):
            raise _error(
                "ALGORITHMS",
                f"must not include {alg!r}: with 'none' or a shared-secret algorithm anyone who "
                "knows the (public) verifying key could mint assertions",
            )
        raise _error(
            "ALGORITHMS",
            f"contains {alg!r}, which authgate does not sign with "
            f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})",
        )
    v["ALGORITHMS"] = tuple(algorithms)

    v["ISSUER"] = _non_empty_str("ISSUER", v["ISSUER"])
    audience = v["AUDIENCE"]
    if isinstance(audience, (list, tuple)):
        if not audience:
            raise _error("AUDIENCE", "must not be empty")
        v["AUDIENCE"] = [_non_empty_str("AUDIENCE", a) for a in audience]
    else:
        v["AUDIENCE"] = _non_empty_str("AUDIENCE", audience)

    v["LEEWAY"] = _seconds("LEEWAY", v["LEEWAY"], allow_zero=True)
    v["JWKS_CACHE_TTL"] = _seconds("JWKS_CACHE_TTL", v["JWKS_CACHE_TTL"], allow_zero=False)
    v["JWKS_TIMEOUT"] = _seconds("JWKS_TIMEOUT", v["JWKS_TIMEOUT"], allow_zero=False)
    v["USER_ID_FIELD"] = _non_empty_str("USER_ID_FIELD", v["USER_ID_FIELD"])
    v["USER_ID_CLAIM"] = _non_empty_str("USER_ID_CLAIM", v["USER_ID_CLAIM"])
    if not isinstance(v["AUTO_CREATE_USERS"], bool):
        raise _error("AUTO_CREATE_USERS", "must be True or False")

    exempt = v["EXEMPT_PATHS"]
    if isinstance(exempt, str):
        exempt = (exempt,)
    if not isinstance(exempt, (list, tuple)) or not all(
        isinstance(p, str) and p.startswith("/") for p in exempt
    ):
        raise _error("EXEMPT_PATHS", "must be a list of path prefixes starting with '/'")
    v["EXEMPT_PATHS"] = tuple(exempt)
    return v


class APISettings:
    """Attribute access to the validated settings, e.g. ``api_settings.AUDIENCE``."""

    def __init__(self, user_settings: dict[str, Any] | None = None, defaults=None) -> None:
        # None: read settings.AUTHGATE lazily, so importing this module needs no configuration.
        self._user_settings = user_settings
        self.defaults = defaults or DEFAULTS
        self._values: dict[str, Any] | None = None

    @property
    def user_settings(self) -> Any:
        if self._user_settings is not None:
            return self._user_settings
        return getattr(settings, SETTINGS_NAME, None) or {}

    def validate(self) -> dict[str, Any]:
        if self._values is None:
            self._values = validate(self.user_settings, self.defaults)
        return self._values

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.defaults:
            raise AttributeError(f"Invalid {SETTINGS_NAME} setting: {attr!r}")
        return self.validate()[attr]

    @property
    def assertion_meta_key(self) -> str:
        """``ASSERTION_HEADER`` as it appears in ``request.META``."""
        return "HTTP_" + self.ASSERTION_HEADER.upper().replace("-", "_")

    def reload(self) -> None:
        self._values = None


api_settings = APISettings()


def reload_api_settings(*args, **kwargs) -> None:
    if kwargs["setting"] == SETTINGS_NAME:
        api_settings.reload()


setting_changed.connect(reload_api_settings)
