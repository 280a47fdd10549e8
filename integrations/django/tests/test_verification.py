"""The assertion itself: signature, algorithm, type and claims (static key and JWKS)."""

import hashlib
import hmac
import json
import time

from django.test import SimpleTestCase, override_settings

from authgate_django.exceptions import AssertionExpired, AssertionRejected
from authgate_django.verification import REQUIRED_CLAIMS, verify_assertion

from .helpers import (
    DELETE,
    JWKSServer,
    authgate_settings,
    b64url,
    claims,
    ed25519_key,
    hs256_with_secret,
    p256_key,
    sign,
    unsigned,
)

ED = ed25519_key()
EC = p256_key()
OTHER_ED = ed25519_key()


class VerifyMixin:
    def assertRejected(self, token, message, exc=AssertionRejected):
        with self.assertRaises(exc) as ctx:
            verify_assertion(token)
        self.assertEqual(ctx.exception.message, message)
        # Nothing about the refusal may carry the token.
        self.assertNotIn(token, str(ctx.exception))
        return ctx.exception


@override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=ED.pem))
class StaticEd25519Tests(VerifyMixin, SimpleTestCase):
    def test_valid(self):
        payload = claims(sub="42", scope="")
        self.assertEqual(verify_assertion(sign(ED, payload)), payload)

    def test_forged_with_another_key_same_kid(self):
        self.assertRejected(sign(ED, signer=OTHER_ED), "authgate assertion signature invalid")

    def test_tampered_payload(self):
        header, _, signature = sign(ED, claims(sub="1")).split(".")
        forged_payload = b64url(json.dumps(claims(sub="2")).encode())
        self.assertRejected(f"{header}.{forged_payload}.{signature}", "authgate assertion signature invalid")

    def test_expired(self):
        now = int(time.time())
        err = self.assertRejected(
            sign(ED, claims(iat=now - 120, exp=now - 60)), "authgate assertion expired", AssertionExpired
        )
        self.assertEqual(err.code, "assertion_expired")

    def test_expiry_within_leeway_is_accepted(self):
        now = int(time.time())
        verify_assertion(sign(ED, claims(iat=now - 62, exp=now - 2)))

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=ED.pem, LEEWAY=0))
    def test_no_leeway(self):
        now = int(time.time())
        self.assertRejected(sign(ED, claims(iat=now - 62, exp=now - 2)), "authgate assertion expired",
                            AssertionExpired)

    def test_issued_in_the_future(self):
        now = int(time.time())
        self.assertRejected(sign(ED, claims(iat=now + 3600, exp=now + 3660)), "authgate assertion not yet valid")

    def test_wrong_audience(self):
        self.assertRejected(sign(ED, claims(aud="billing")), "authgate assertion audience mismatch")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=ED.pem, AUDIENCE=["reports", "lms"]))
    def test_audience_list(self):
        verify_assertion(sign(ED, claims(aud="lms")))
        self.assertRejected(sign(ED, claims(aud="billing")), "authgate assertion audience mismatch")

    def test_wrong_issuer(self):
        self.assertRejected(sign(ED, claims(iss="https://evil.example.com")), "authgate assertion issuer mismatch")

    def test_wrong_type(self):
        self.assertRejected(sign(ED, typ="JWT"), "authgate assertion type invalid")
        self.assertRejected(sign(ED, typ=DELETE), "authgate assertion type invalid")
        # RFC 7515: typ is case-insensitive.
        verify_assertion(sign(ED, typ="Authgate+JWT"))

    def test_missing_claims(self):
        for claim in REQUIRED_CLAIMS:
            with self.subTest(claim=claim):
                self.assertRejected(sign(ED, claims(**{claim: DELETE})), f"authgate assertion missing claim '{claim}'")

    def test_claim_types(self):
        for claim, value in (("sub", 42), ("sub", ""), ("jti", 7), ("provider", ["x"]), ("scope", ["read"])):
            with self.subTest(claim=claim, value=value):
                self.assertRejected(sign(ED, claims(**{claim: value})), f"authgate assertion claim '{claim}' invalid")

    def test_scope_may_be_absent(self):
        verify_assertion(sign(ED, claims(scope=DELETE)))

    def test_alg_none(self):
        token = unsigned({"alg": "none", "typ": "authgate+jwt", "kid": ED.kid}, claims())
        self.assertRejected(token, "authgate assertion algorithm not allowed")

    def test_hs256_with_public_key_as_secret(self):
        token = hs256_with_secret({"typ": "authgate+jwt", "kid": ED.kid}, claims(), ED.pem.encode())
        # A real confusion attack: the MAC is right for the PEM a naive verifier would use.
        signing_input, _, mac = token.rpartition(".")
        expected = hmac.new(ED.pem.encode(), signing_input.encode(), hashlib.sha256).digest()
        self.assertEqual(mac, b64url(expected))
        self.assertRejected(token, "authgate assertion algorithm not allowed")

    def test_algorithm_must_match_the_key(self):
        # ES256 is allowed in general, but this key is Ed25519.
        self.assertRejected(sign(ED, signer=EC, alg="ES256"), "authgate assertion algorithm does not match its key")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=ED.pem, ALGORITHMS=["ES256"]))
    def test_algorithm_not_in_allowed_list(self):
        self.assertRejected(sign(ED), "authgate assertion algorithm not allowed")

    def test_malformed(self):
        for token in ("not-a-jws", "a.b.c", "x" * 9000):
            with self.subTest(token=token[:20]):
                self.assertRejected(token, "authgate assertion malformed")

    def test_static_key_does_not_need_the_kid(self):
        verify_assertion(sign(ED, kid=DELETE))


@override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=EC.pem))
class StaticP256Tests(VerifyMixin, SimpleTestCase):
    def test_valid(self):
        payload = claims(sub="7")
        self.assertEqual(verify_assertion(sign(EC, payload)), payload)

    def test_forged(self):
        self.assertRejected(sign(EC, signer=p256_key()), "authgate assertion signature invalid")

    def test_eddsa_token_against_p256_key(self):
        self.assertRejected(sign(EC, signer=ED, alg="EdDSA"), "authgate assertion algorithm does not match its key")

    def test_hs256_with_public_key_as_secret(self):
        token = hs256_with_secret({"typ": "authgate+jwt", "kid": EC.kid}, claims(), EC.pem.encode())
        self.assertRejected(token, "authgate assertion algorithm not allowed")


class JWKSVerificationTests(VerifyMixin, SimpleTestCase):
    """Same rules when the key comes from the gateway's JWKS, chosen by kid."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = JWKSServer(ED, EC)
        cls.addClassCleanup(cls.server.stop)

    def setUp(self):
        override = self.settings(AUTHGATE=authgate_settings(JWKS_URL=self.server.url))
        override.enable()
        self.addCleanup(override.disable)

    def test_valid_eddsa_and_es256(self):
        self.assertEqual(verify_assertion(sign(ED, claims(sub="1")))["sub"], "1")
        self.assertEqual(verify_assertion(sign(EC, claims(sub="2")))["sub"], "2")

    def test_forged_with_another_key_same_kid(self):
        self.assertRejected(sign(ED, signer=OTHER_ED), "authgate assertion signature invalid")
        self.assertRejected(sign(EC, signer=p256_key()), "authgate assertion signature invalid")

    def test_kid_of_one_key_alg_of_the_other(self):
        self.assertRejected(sign(ED, signer=EC, alg="ES256"), "authgate assertion algorithm does not match its key")

    def test_kid_required(self):
        self.assertRejected(sign(ED, kid=DELETE), "authgate assertion has no key id")

    def test_hs256_with_jwk_material_as_secret(self):
        for secret in (ED.pem.encode(), ED.jwk["x"].encode()):
            token = hs256_with_secret({"typ": "authgate+jwt", "kid": ED.kid}, claims(), secret)
            self.assertRejected(token, "authgate assertion algorithm not allowed")

    def test_alg_none(self):
        token = unsigned({"alg": "none", "typ": "authgate+jwt", "kid": ED.kid}, claims())
        self.assertRejected(token, "authgate assertion algorithm not allowed")
