"""Fetching and caching the gateway's JWKS, against a real HTTP server."""

import base64
import os
import threading
from unittest import mock

from cryptography.hazmat.primitives import serialization
from django.test import SimpleTestCase

from authgate_django import keys
from authgate_django.exceptions import AssertionRejected, KeysUnavailable
from authgate_django.verification import verify_assertion

from .helpers import (
    FakeClock,
    JWKSServer,
    authgate_settings,
    b64url,
    claims,
    ed25519_key,
    hs256_with_secret,
    p256_key,
    sign,
    thumbprint,
)


class JWKSTestCase(SimpleTestCase):
    def setUp(self):
        self.old, self.new = ed25519_key(), ed25519_key()
        self.server = JWKSServer(self.old)
        self.addCleanup(self.server.stop)
        self.clock = FakeClock()
        patcher = mock.patch.object(keys, "monotonic", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.configure()

    def configure(self, **overrides):
        override = self.settings(
            AUTHGATE=authgate_settings(JWKS_URL=self.server.url, JWKS_CACHE_TTL=300, **overrides)
        )
        override.enable()
        self.addCleanup(override.disable)

    def assertRejected(self, token, message, exc=AssertionRejected):
        with self.assertRaises(exc) as ctx:
            verify_assertion(token)
        self.assertEqual(ctx.exception.message, message)
        return ctx.exception


class CacheTests(JWKSTestCase):
    def test_fetched_once_then_cached(self):
        for _ in range(5):
            verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 1)

    def test_refetched_after_cache_ttl(self):
        verify_assertion(sign(self.old))
        self.clock.advance(299)
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 1)
        self.clock.advance(2)
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 2)

    def test_concurrent_cold_start_fetches_once(self):
        self.server.delay = 0.2
        errors = []

        def verify():
            try:
                verify_assertion(sign(self.old))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=verify) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(errors, [])
        self.assertEqual(self.server.hits, 1)

    def test_settings_change_starts_a_new_cache(self):
        verify_assertion(sign(self.old))
        self.configure(JWKS_TIMEOUT=1)
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 2)


class UnknownKidTests(JWKSTestCase):
    def test_unknown_kid_refetches_at_most_once_per_interval(self):
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 1)
        forged = sign(self.new)  # a kid the gateway does not serve
        for _ in range(20):
            self.assertRejected(forged, "authgate assertion key unknown")
        self.assertEqual(self.server.hits, 2)
        self.clock.advance(keys.UNKNOWN_KID_REFETCH_INTERVAL - 1)
        self.assertRejected(forged, "authgate assertion key unknown")
        self.assertEqual(self.server.hits, 2)
        self.clock.advance(2)
        self.assertRejected(forged, "authgate assertion key unknown")
        self.assertEqual(self.server.hits, 3)
        # Known kids never wait for any of this.
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 3)

    def test_rotation_old_kid_then_new_kid(self):
        self.assertEqual(verify_assertion(sign(self.old, claims(sub="1")))["sub"], "1")
        # The gateway rotates: new key first, previous key kept for one assertion ttl.
        self.server.serve(self.new, self.old)
        self.assertEqual(verify_assertion(sign(self.new, claims(sub="2")))["sub"], "2")
        self.assertEqual(self.server.hits, 2)
        verify_assertion(sign(self.old))  # still valid until the cache is refreshed
        # After the ttl the gateway drops the old key; once our cache expires, so do we.
        self.server.serve(self.new)
        self.clock.advance(301)
        verify_assertion(sign(self.new))
        self.assertEqual(self.server.hits, 3)
        self.assertRejected(sign(self.old), "authgate assertion key unknown")

    def test_rotation_to_a_different_algorithm(self):
        ec_key = p256_key()
        verify_assertion(sign(self.old))
        self.server.serve(ec_key, self.old)
        verify_assertion(sign(ec_key))


class OutageTests(JWKSTestCase):
    def test_down_with_warm_cache_keeps_working(self):
        verify_assertion(sign(self.old))
        self.server.stop()
        self.clock.advance(301)  # stale: a refetch is attempted and fails
        with self.assertLogs("authgate_django", "WARNING") as logs:
            verify_assertion(sign(self.old))
        self.assertIn("keeping 1 cached key(s)", logs.output[0])
        # The failure is not retried on every request.
        with mock.patch.object(keys.JWKSClient, "_fetch", side_effect=AssertionError("fetched")):
            verify_assertion(sign(self.old))
        # Unknown kids are still refused.
        with self.assertLogs("authgate_django", "WARNING"):
            self.assertRejected(sign(self.new), "authgate assertion key unknown")

    def test_down_cold_refuses(self):
        self.server.stop()
        with self.assertLogs("authgate_django", "WARNING"):
            err = self.assertRejected(sign(self.old), "authgate verification keys unavailable", KeysUnavailable)
        self.assertEqual(err.code, "keys_unavailable")

    def test_recovers_after_a_cold_failure(self):
        self.server.status = 503
        with self.assertLogs("authgate_django", "WARNING"):
            self.assertRejected(sign(self.old), "authgate verification keys unavailable", KeysUnavailable)
        self.server.status = 200
        self.assertRejected(sign(self.old), "authgate verification keys unavailable", KeysUnavailable)
        self.assertEqual(self.server.hits, 1)  # within the retry interval: not refetched
        self.clock.advance(keys.FETCH_RETRY_INTERVAL + 0.1)
        verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 2)

    def test_broken_documents_do_not_replace_a_good_cache(self):
        verify_assertion(sign(self.old))
        for document in (b"<html>", {"keys": []}, {"nope": 1}, {"keys": "x"}, b"x" * 70000):
            with self.subTest(document=str(document)[:20]):
                self.server.document = document
                self.clock.advance(301)
                with self.assertLogs("authgate_django", "WARNING"):
                    verify_assertion(sign(self.old))

    def test_redirects_are_not_followed(self):
        elsewhere = JWKSServer(self.old)
        self.addCleanup(elsewhere.stop)
        self.server.redirect_to = elsewhere.url
        with self.assertLogs("authgate_django", "WARNING"):
            self.assertRejected(sign(self.old), "authgate verification keys unavailable", KeysUnavailable)
        self.assertEqual(elsewhere.hits, 0)

    def test_environment_proxy_is_not_used(self):
        with mock.patch.dict(os.environ, {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                                          "no_proxy": "", "NO_PROXY": ""}):
            verify_assertion(sign(self.old))
        self.assertEqual(self.server.hits, 1)


class UnusableEntriesTests(JWKSTestCase):
    def test_entries_that_must_not_be_used_are_skipped(self):
        secret = b"shared-secret"
        oct_key = {"kty": "oct", "k": b64url(secret), "kid": "hmac", "alg": "HS256"}
        enc_key = {**self.new.jwk, "use": "enc"}
        mismatched = {**ed25519_key().jwk, "alg": "ES256"}
        self.server.document = {"keys": [oct_key, enc_key, mismatched, self.old.jwk]}
        verify_assertion(sign(self.old))
        # An HMAC key in the JWKS does not make HS256 acceptable ...
        self.assertRejected(
            hs256_with_secret({"typ": "authgate+jwt", "kid": "hmac"}, claims(), secret),
            "authgate assertion algorithm not allowed",
        )
        # ... and keys for encryption or another algorithm are not there for us.
        self.assertRejected(sign(self.new), "authgate assertion key unknown")
        self.assertNotIn(mismatched["kid"], keys.get_jwks_client()._snapshot.keys)

    def test_private_key_entry_is_skipped(self):
        raw = self.new.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        leaked = {**self.new.jwk, "d": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
        self.server.document = {"keys": [leaked, self.old.jwk]}
        verify_assertion(sign(self.old))
        self.assertRejected(sign(self.new), "authgate assertion key unknown")


class ThumbprintTests(SimpleTestCase):
    def test_kid_is_the_rfc_7638_thumbprint(self):
        # RFC 8037 A.3, the same vector the gateway's own tests use: the kids signed in these
        # tests are the kids authgate puts in its JWKS.
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        self.assertEqual(thumbprint(jwk), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
