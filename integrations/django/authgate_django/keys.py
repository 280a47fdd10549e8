"""The gateway's verifying keys: a JWKS fetched from its admin listener, or one static PEM key.

The JWKS is cached in-process for ``JWKS_CACHE_TTL``. Fetching is guarded so that:

- only one thread fetches at a time; while a warm cache is being refreshed the other threads keep
  verifying with the keys they have instead of queueing behind the fetch;
- an assertion with an unknown ``kid`` (e.g. right after the gateway rotated its key) triggers a
  refetch, but at most one per ``UNKNOWN_KID_REFETCH_INTERVAL``, so a stream of forged kids cannot
  make this process hammer the gateway;
- a failed fetch keeps the keys already cached (the gateway serves a key for its whole life plus
  one assertion ttl, so they stay correct) and is retried after ``FETCH_RETRY_INTERVAL``;
- with no keys at all every assertion is refused with ``KeysUnavailable`` (fail closed).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from time import monotonic
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from . import __version__
from .exceptions import AssertionRejected, KeysUnavailable
from .settings import SETTINGS_NAME, api_settings

logger = logging.getLogger("authgate_django")

UNKNOWN_KID_REFETCH_INTERVAL = 10.0
FETCH_RETRY_INTERVAL = 1.0
# The gateway's JWKS holds one or two keys; anything this large is not it.
MAX_JWKS_BYTES = 64 * 1024


class VerifyingKey(NamedTuple):
    key: Any  # a cryptography public key object
    algorithm: str  # the one JWS "alg" this key may verify


def algorithm_for_key(key: Any) -> str | None:
    """The JWS algorithm authgate uses with this kind of public key, or None if it uses none.

    Binding the algorithm to the key (rather than trusting the token's "alg") is what rules out
    algorithm confusion.
    """
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def key_from_jwk(jwk: dict[str, Any]) -> VerifyingKey | None:
    """A verifying key from one JWKS entry, or None for entries this package must not use."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
        # Encryption keys are not for us; an entry with "d" is a leaked private key.
        return None
    try:
        if jwk.get("kty") == "OKP":
            key = OKPAlgorithm.from_jwk(jwk)
        elif jwk.get("kty") == "EC":
            key = ECAlgorithm.from_jwk(jwk)
        else:
            return None
    except Exception:  # PyJWT raises several types for malformed members
        return None
    algorithm = algorithm_for_key(key)
    if algorithm is None or jwk.get("alg", algorithm) != algorithm:
        return None
    return VerifyingKey(key, algorithm)


def load_static_key(pem: str) -> VerifyingKey:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ImproperlyConfigured(f"{SETTINGS_NAME}['VERIFYING_KEY'] is not a valid PEM public key") from exc
    algorithm = algorithm_for_key(key)
    if algorithm is None:
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}['VERIFYING_KEY'] must be an Ed25519 or P-256 public key"
        )
    return VerifyingKey(key, algorithm)


class JWKSError(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The gateway never redirects its JWKS; following one could lead anywhere urllib can open.
    def redirect_request(self, *args, **kwargs):
        return None


# No proxies from the environment: the JWKS comes from the gateway's own admin listener, and an
# HTTP(S)_PROXY meant for outbound traffic must not sit between the app and its trust anchor.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


class _Snapshot(NamedTuple):
    keys: dict[str, VerifyingKey]
    fresh_until: float  # monotonic; before it no fetch is attempted for a stale cache
    generation: int  # bumped on every fetch attempt


class JWKSClient:
    def __init__(self, url: str, cache_ttl: float, timeout: float) -> None:
        self.url = url
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        # Replaced as a whole, never mutated: readers need no lock.
        self._snapshot = _Snapshot({}, float("-inf"), 0)
        self._fetch_lock = threading.Lock()
        self._kid_refetch_after = float("-inf")
        self._kid_lock = threading.Lock()

    def get_key(self, kid: str) -> VerifyingKey:
        snap = self._snapshot
        if monotonic() >= snap.fresh_until:
            # Stale or cold. If the cache can answer, let one thread refresh while the others
            # carry on with it; otherwise wait for the fetch in flight.
            self._refresh(snap.generation, wait=kid not in snap.keys)
        elif snap.keys and kid not in snap.keys and self._may_refetch_for_unknown_kid():
            # Only with a warm cache: with none, FETCH_RETRY_INTERVAL alone paces the retries.
            self._refresh(snap.generation, wait=True)
        keys = self._snapshot.keys
        if kid in keys:
            return keys[kid]
        if not keys:
            raise KeysUnavailable("authgate verification keys unavailable")
        raise AssertionRejected("authgate assertion key unknown")

    def _may_refetch_for_unknown_kid(self) -> bool:
        with self._kid_lock:
            now = monotonic()
            if now < self._kid_refetch_after:
                return False
            self._kid_refetch_after = now + UNKNOWN_KID_REFETCH_INTERVAL
            return True

    def _refresh(self, seen_generation: int, *, wait: bool) -> None:
        if not self._fetch_lock.acquire(blocking=wait):
            return
        try:
            snap = self._snapshot
            if snap.generation != seen_generation:
                return  # another thread fetched while we waited; use its result
            try:
                keys = self._fetch()
            except Exception as exc:
                logger.warning(
                    "authgate JWKS fetch from %s failed (%s); %s",
                    self.url,
                    exc,
                    f"keeping {len(snap.keys)} cached key(s)" if snap.keys else "no keys cached",
                )
                self._snapshot = _Snapshot(
                    snap.keys, monotonic() + FETCH_RETRY_INTERVAL, snap.generation + 1
                )
                return
            self._snapshot = _Snapshot(keys, monotonic() + self.cache_ttl, snap.generation + 1)
        finally:
            self._fetch_lock.release()

    def _fetch(self) -> dict[str, VerifyingKey]:
        request = urllib.request.Request(
            self.url,
            headers={"Accept": "application/json", "User-Agent": f"authgate-django/{__version__}"},
        )
        with _opener.open(request, timeout=self.timeout) as response:
            if response.status != 200:
                raise JWKSError(f"HTTP {response.status}")
            body = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise JWKSError("response too large")
        try:
            entries = json.loads(body)["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise JWKSError("not a JWK set") from exc
        if not isinstance(entries, list):
            raise JWKSError("not a JWK set")
        keys = {}
        for jwk in entries:
            parsed = key_from_jwk(jwk)
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            if parsed is not None and isinstance(kid, str) and kid:
                keys[kid] = parsed
        if not keys:
            # Treated as a failure so a broken response does not wipe a good cache.
            raise JWKSError("no usable EdDSA/ES256 signing keys")
        return keys


_clients: dict[tuple, JWKSClient] = {}
_static: dict[str, VerifyingKey] = {}
_registry_lock = threading.Lock()


def get_jwks_client() -> JWKSClient:
    """The process-wide client for the configured JWKS URL (one cache per URL and settings)."""
    config = (api_settings.JWKS_URL, api_settings.JWKS_CACHE_TTL, api_settings.JWKS_TIMEOUT)
    client = _clients.get(config)
    if client is None:
        with _registry_lock:
            client = _clients.setdefault(config, JWKSClient(*config))
    return client


def get_verifying_key(kid: Any) -> VerifyingKey:
    """The key an assertion with this JOSE ``kid`` must verify under."""
    pem = api_settings.VERIFYING_KEY
    if pem:
        # One static key: the kid is not needed to choose it, and the signature decides.
        key = _static.get(pem)
        if key is None:
            key = _static.setdefault(pem, load_static_key(pem))
        return key
    if not isinstance(kid, str) or not kid:
        raise AssertionRejected("authgate assertion has no key id")
    return get_jwks_client().get_key(kid)


def reset_key_caches() -> None:
    """Forget every cached JWKS and static key (tests; settings changes)."""
    with _registry_lock:
        _clients.clear()
        _static.clear()


def _on_setting_changed(*args, **kwargs) -> None:
    if kwargs["setting"] == SETTINGS_NAME:
        reset_key_caches()


setting_changed.connect(_on_setting_changed)
