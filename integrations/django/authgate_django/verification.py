"""Verifying an authgate assertion: a compact JWS the gateway signs for each identity.

    {"alg": "EdDSA" | "ES256", "typ": "authgate+jwt", "kid": "<RFC 7638 thumbprint>"}
    {"iss", "aud", "sub", "scope", "provider", "iat", "exp", "jti"}

The gateway reuses one assertion for the same identity for part of its lifetime, so ``jti`` is
required but deliberately not checked for replay.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from .exceptions import AssertionExpired, AssertionRejected
from .keys import get_verifying_key
from .settings import api_settings

ASSERTION_TYPE = "authgate+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "exp", "jti", "provider")
# Far above any real assertion (a few hundred bytes); refuse before parsing anything larger.
MAX_ASSERTION_LENGTH = 8192


def _header(token: str) -> dict[str, Any]:
    if len(token) > MAX_ASSERTION_LENGTH:
        raise AssertionRejected("authgate assertion malformed")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AssertionRejected("authgate assertion malformed") from None


def verify_assertion(token: str) -> dict[str, Any]:
    """The assertion's claims if it is valid here; AssertionRejected (or a subclass) if not."""
    header = _header(token)

    typ = header.get("typ")
    # RFC 7515 4.1.9: "typ" is compared case-insensitively. A plain JWT ("JWT") is refused so an
    # access token signed by the same key for another purpose cannot pass as an assertion.
    if not isinstance(typ, str) or typ.lower() != ASSERTION_TYPE:
        raise AssertionRejected("authgate assertion type invalid")

    alg = header.get("alg")
    if alg not in api_settings.ALGORITHMS:
        raise AssertionRejected("authgate assertion algorithm not allowed")

    verifying_key = get_verifying_key(header.get("kid"))
    if verifying_key.algorithm != alg:
        # An Ed25519 key only verifies EdDSA and a P-256 key only ES256, whatever the token says.
        raise AssertionRejected("authgate assertion algorithm does not match its key")

    leeway = api_settings.LEEWAY
    try:
        claims = jwt.decode(
            token,
            verifying_key.key,
            algorithms=[verifying_key.algorithm],
            audience=api_settings.AUDIENCE,
            issuer=api_settings.ISSUER,
            leeway=leeway,
            # sub/jti types are checked below for every PyJWT version, with our messages.
            options={"require": list(REQUIRED_CLAIMS), "verify_sub": False, "verify_jti": False},
        )
    except jwt.ExpiredSignatureError:
        raise AssertionExpired() from None
    except jwt.ImmatureSignatureError:
        raise AssertionRejected("authgate assertion not yet valid") from None
    except jwt.InvalidSignatureError:
        raise AssertionRejected("authgate assertion signature invalid") from None
    except jwt.InvalidAudienceError:
        raise AssertionRejected("authgate assertion audience mismatch") from None
    except jwt.InvalidIssuerError:
        raise AssertionRejected("authgate assertion issuer mismatch") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AssertionRejected(f"authgate assertion missing claim '{exc.claim}'") from None
    except jwt.InvalidAlgorithmError:
        raise AssertionRejected("authgate assertion algorithm not allowed") from None
    except jwt.InvalidIssuedAtError:
        raise AssertionRejected("authgate assertion claim 'iat' invalid") from None
    except jwt.PyJWTError:
        raise AssertionRejected("authgate assertion malformed") from None

    _check_claim_types(claims, leeway)
    return claims


def _check_claim_types(claims: dict[str, Any], leeway: float) -> None:
    # Done here as well as in PyJWT: older PyJWT releases accept a non-string "sub" and an "iat"
    # in the future, and "provider"/"scope" are ours to check.
    for name in ("sub", "jti", "provider"):
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise AssertionRejected(f"authgate assertion claim '{name}' invalid")
    if not isinstance(claims.get("scope", ""), str):
        raise AssertionRejected("authgate assertion claim 'scope' invalid")
    for name in ("iat", "exp"):
        if isinstance(claims[name], bool) or not isinstance(claims[name], (int, float)):
            raise AssertionRejected(f"authgate assertion claim '{name}' invalid")
    if claims["iat"] > time.time() + leeway:
        raise AssertionRejected("authgate assertion not yet valid")
