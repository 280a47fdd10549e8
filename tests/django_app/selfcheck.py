#!/usr/bin/env python3
"""Checks tests/django_app end to end without the gateway: plays authgate's part itself.

    python3 tests/django_app/selfcheck.py

Serves a throwaway JWKS from a local http.server, starts serve.py on a free port, logs in
through simplejwt's real views, then calls the API with assertions signed here the way authgate
signs them. Exits 1 if any check fails (printing serve.py's stderr), 0 otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = "https://authgate.example.com"
AUDIENCE = "lms"
JWT_SECRET = "selfcheck-simplejwt-secret-0123456789abcdef"


class Key:
    def __init__(self) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        self.jwk = {**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def assertion(self, sub: str, *, signer: "Key | None" = None, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": "read", "provider": "lms-jwt",
                  "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(12), **overrides}
        return jwt.encode(claims, (signer or self).private, algorithm="EdDSA",
                          headers={"typ": "authgate+jwt", "kid": self.kid})


class JWKS:
    def __init__(self, *keys: Key) -> None:
        self.keys = list(keys)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"keys": [k.jwk for k in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


# Loopback only: never through an HTTP(S)_PROXY from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(base: str, method: str, path: str, body=None, assertion: str | None = None, headers=None):
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if assertion is not None:
        headers["X-Auth-Assertion"] = assertion
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=10) as response:
            status, resp_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, resp_headers, raw = err.code, err.headers, err.read()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, resp_headers, payload


class Checks:
    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def check(self, name: str, ok: bool, detail="") -> None:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}: {detail}")


def start_server(db: str, jwks_url: str, stderr) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "JWT_SECRET": JWT_SECRET,
        "AUTHGATE_JWKS_URL": jwks_url,
        "AUTHGATE_ISSUER": ISSUER,
        "AUTHGATE_AUDIENCE": AUDIENCE,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "serve.py"), "--listen", "127.0.0.1:0", "--db", db],
        stdout=subprocess.PIPE, stderr=stderr, env=env, text=True,
    )
    started = time.monotonic()
    line = proc.stdout.readline()  # serve.py prints nothing else on stdout
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"serve.py did not become ready (got {line!r}, exit {proc.poll()})")
    print(f"serve.py ready on {line.split()[1]} after {time.monotonic() - started:.1f} s")
    return proc, "http://" + line.split()[1]


def run(base: str, key: Key, jwks: JWKS) -> Checks:
    c = Checks()
    status, _, body = call(base, "GET", "/health/")
    c.check("health needs no assertion", status == 200 and body == {"status": "ok"}, (status, body))

    status, _, tokens = call(base, "POST", "/api/token/", {"username": "alice", "password": "alice-pass"})
    c.check("login alice via simplejwt", status == 200 and {"access", "refresh"} <= set(tokens or {}), (status, tokens))
    if status != 200:
        return c
    alice_id = str(jwt.decode(tokens["access"], JWT_SECRET, algorithms=["HS256"])["user_id"])
    _, _, bob_tokens = call(base, "POST", "/api/token/", {"username": "bob", "password": "bob-pass"})
    bob_id = int(jwt.decode(bob_tokens["access"], JWT_SECRET, algorithms=["HS256"])["user_id"])
    status, _, body = call(base, "POST", "/api/token/", {"username": "alice", "password": "wrong"})
    c.check("login with a wrong password is 401", status == 401, (status, body))

    token = key.assertion(alice_id)
    status, _, body = call(base, "GET", "/api/whoami/", assertion=token)
    claims = jwt.decode(token, options={"verify_signature": False})
    c.check("whoami with an assertion",
            status == 200 and body == {"user_id": int(alice_id), "username": "alice", "claims": claims},
            (status, body))

    status, _, body = call(base, "GET", f"/api/users/{alice_id}/profile/", assertion=token)
    c.check("own profile", status == 200 and body == {"id": int(alice_id), "username": "alice",
                                                     "email": "alice@example.com"}, (status, body))
    status, _, body = call(base, "GET", f"/api/users/{bob_id}/profile/", assertion=token)
    c.check("someone else's profile is 403", status == 403, (status, body))

    status, _, body = call(base, "GET", "/api/products/search/?q=python&page_size=5", assertion=token)
    c.check("search page 1", status == 200 and body["count"] == 8 and len(body["results"]) == 5
            and body["previous"] is None and "page=2" in (body["next"] or "")
            and all("python" in p["name"].lower() for p in body["results"]), (status, body))
    status, _, body = call(base, "GET", "/api/products/search/?q=python&page_size=5&page=2", assertion=token)
    c.check("search page 2", status == 200 and len(body["results"]) == 3 and body["next"] is None
            and body["previous"], (status, body))
    status, _, body = call(base, "GET", "/api/products/search/", assertion=token)
    c.check("search without q", status == 200 and body["count"] == 200 and len(body["results"]) == 20, (status, body))

    status, _, body = call(base, "POST", "/api/token/refresh/", {"refresh": tokens["refresh"]})
    c.check("refresh", status == 200 and "access" in body, (status, body))

    status, _, body = call(base, "POST", "/api/auth/logout/", {"refresh": bob_tokens["refresh"]}, assertion=token)
    c.check("logout with someone else's refresh token is 403", status == 403, (status, body))
    status, _, body = call(base, "POST", "/api/auth/logout/", {"refresh": tokens["refresh"]}, assertion=token)
    c.check("logout", status == 200 and body == {"detail": "logged out"}, (status, body))
    status, _, body = call(base, "POST", "/api/token/refresh/", {"refresh": tokens["refresh"]})
    c.check("refresh after logout is refused (blacklisted)", status == 401, (status, body))
    status, _, body = call(base, "POST", "/api/auth/logout/", {}, assertion=token)
    c.check("logout without a refresh token", status == 200 and body == {"detail": "logged out"}, (status, body))

    status, headers, body = call(base, "GET", "/api/whoami/")
    c.check("missing assertion is 401",
            status == 401 and headers.get("WWW-Authenticate") == 'AuthgateAssertion realm="api"'
            and body == {"detail": "Authentication credentials were not provided."}, (status, body))
    status, _, body = call(base, "GET", "/api/whoami/", headers={"X-Auth-Subject": alice_id,
                                                                "Authorization": f"Bearer {tokens['access']}"})
    c.check("X-Auth-Subject and a bearer token are not trusted", status == 401, (status, body))
    status, _, body = call(base, "GET", "/api/whoami/", assertion=key.assertion(alice_id, signer=Key()))
    c.check("forged assertion is 401",
            status == 401 and body == {"detail": "authgate assertion signature invalid", "code": "invalid_assertion"},
            (status, body))
    now = int(time.time())
    status, _, body = call(base, "GET", "/api/whoami/", assertion=key.assertion(alice_id, iat=now - 300, exp=now - 240))
    c.check("expired assertion is 401",
            status == 401 and body == {"detail": "authgate assertion expired", "code": "assertion_expired"},
            (status, body))
    status, _, body = call(base, "GET", "/api/whoami/", assertion=key.assertion(alice_id, aud="billing"))
    c.check("assertion for another upstream is 401", status == 401 and body.get("detail") ==
            "authgate assertion audience mismatch", (status, body))

    # The gateway rotates its key: it serves the new and the previous one.
    new = Key()
    jwks.keys = [new, key]
    status, _, body = call(base, "GET", "/api/whoami/", assertion=new.assertion(str(bob_id)))
    c.check("rotated key (new kid) is fetched and accepted", status == 200 and body["username"] == "bob", (status, body))
    status, _, body = call(base, "GET", "/api/whoami/", assertion=key.assertion(alice_id))
    c.check("previous key still accepted", status == 200 and body["username"] == "alice", (status, body))
    return c


def main() -> int:
    key = Key()
    jwks = JWKS(key)
    with tempfile.TemporaryDirectory(prefix="lms-selfcheck-") as tmp, \
            open(os.path.join(tmp, "serve.err"), "w+") as stderr:
        proc = None
        try:
            proc, base = start_server(os.path.join(tmp, "db.sqlite3"), jwks.url, stderr)
            checks = run(base, key, jwks)
        except Exception as exc:
            checks = Checks()
            checks.check("selfcheck ran", False, repr(exc))
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            jwks.httpd.shutdown()
        print(f"{checks.passed} passed, {checks.failed} failed")
        if checks.failed:
            stderr.seek(0)
            print("--- serve.py stderr ---\n" + stderr.read(), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
