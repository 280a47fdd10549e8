"""Keys, assertions and a real JWKS server, as authgate produces them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

ISSUER = "https://authgate.example.com"
AUDIENCE = "lms"
DELETE = object()  # claims(sub=DELETE) leaves the claim out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


class SigningKey:
    """A gateway signing key: the private half signs, the public half is what the app trusts."""

    def __init__(self, private: Any, alg: str) -> None:
        self.private = private
        self.public = private.public_key()
        self.alg = alg
        algorithm = OKPAlgorithm if alg == "EdDSA" else ECAlgorithm
        jwk = algorithm.to_jwk(self.public, as_dict=True)
        self.kid = thumbprint(jwk)
        self.jwk = {**jwk, "kid": self.kid, "alg": alg, "use": "sig"}
        self.pem = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def ed25519_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def p256_key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), "ES256")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "1",
        "scope": "read write",
        "provider": "lms-jwt",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    for name, value in overrides.items():
        if value is DELETE:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def sign(key: SigningKey, payload: dict[str, Any] | None = None, *, signer: SigningKey | None = None,
         **header: Any) -> str:
    """An assertion with ``key``'s kid and alg, signed by ``signer`` (default: ``key``)."""
    fields = {"typ": "authgate+jwt", "kid": key.kid, **header}
    fields = {k: v for k, v in fields.items() if v is not DELETE}
    signer = signer or key
    return jwt.encode(
        payload if payload is not None else claims(),
        signer.private,
        algorithm=fields.pop("alg", signer.alg),
        headers=fields,
    )


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    encode = lambda obj: b64url(json.dumps(obj).encode())  # noqa: E731
    return f"{encode(header)}.{encode(payload)}.{b64url(signature)}"


def hs256_with_secret(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """What an attacker builds for algorithm confusion: HMAC keyed with the public key's PEM.

    PyJWT refuses to sign this way itself, so it is assembled by hand.
    """
    encode = lambda obj: b64url(json.dumps(obj).encode())  # noqa: E731
    signing_input = f"{encode({**header, 'alg': 'HS256'})}.{encode(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


class JWKSServer:
    """The gateway's admin JWKS endpoint on a free loopback port, in a thread."""

    path = "/.well-known/jwks.json"

    def __init__(self, *keys: SigningKey) -> None:
        self.document: Any = {"keys": [k.jwk for k in keys]}
        self.status = 200
        self.redirect_to: str | None = None
        self.delay = 0.0
        self.hits = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                if server.delay:
                    time.sleep(server.delay)
                if self.path != server.path:
                    self.send_error(404)
                    return
                if server.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = (
                    server.document
                    if isinstance(server.document, bytes)
                    else json.dumps(server.document).encode()
                )
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}{self.path}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._stopped = False

    def serve(self, *keys: SigningKey) -> None:
        self.document = {"keys": [k.jwk for k in keys]}

    def stop(self) -> None:
        """Close the listening socket: fetches now fail with connection refused."""
        if not self._stopped:
            self._stopped = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)


class FakeClock:
    """Stands in for time.monotonic in authgate_django.keys, so intervals pass instantly."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def authgate_settings(**overrides: Any) -> dict[str, Any]:
    """An AUTHGATE dict; pass JWKS_URL or VERIFYING_KEY (exactly one is required)."""
    return {"ISSUER": ISSUER, "AUDIENCE": AUDIENCE, **overrides}
