"""AuthgateAssertionMiddleware in front of plain Django views."""

import time
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import TestCase, override_settings

from authgate_django import verification
from authgate_django.middleware import AuthgateAssertionMiddleware

from .helpers import authgate_settings, claims, ed25519_key, sign

KEY = ed25519_key()
MIDDLEWARE = ["authgate_django.middleware.AuthgateAssertionMiddleware"]
User = get_user_model()


@override_settings(
    MIDDLEWARE=MIDDLEWARE,
    AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, EXEMPT_PATHS=["/health/"]),
)
class MiddlewareTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.alice = User.objects.create_user("alice")

    def get(self, path="/plain/whoami/", token=None):
        headers = {} if token is None else {"X-Auth-Assertion": token}
        return self.client.get(path, headers=headers)

    def assert401(self, response, error, message):
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertEqual(response["WWW-Authenticate"], 'AuthgateAssertion realm="api"')
        self.assertEqual(response["Cache-Control"], "no-store")
        self.assertEqual(response.json(), {"error": error, "message": message})

    def test_valid(self):
        payload = claims(sub=str(self.alice.id))
        response = self.get(token=sign(KEY, payload))
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"authenticated": True, "user_id": self.alice.id, "claims": payload})

    def test_missing(self):
        self.assert401(self.get(), "missing_assertion", "authgate assertion missing")

    def test_invalid(self):
        token = sign(KEY, claims(sub=str(self.alice.id)), signer=ed25519_key())
        response = self.get(token=token)
        self.assert401(response, "invalid_assertion", "authgate assertion signature invalid")
        self.assertNotIn(token.encode(), response.content)

    def test_expired(self):
        now = int(time.time())
        token = sign(KEY, claims(sub=str(self.alice.id), iat=now - 200, exp=now - 100))
        self.assert401(self.get(token=token), "assertion_expired", "authgate assertion expired")

    def test_unknown_user(self):
        self.assert401(self.get(token=sign(KEY, claims(sub="999999"))), "user_not_found",
                       "authgate assertion user not found")

    def test_exempt_path(self):
        response = self.get("/health/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"authenticated": False, "user_id": None, "claims": None})
        # A bad assertion on an exempt path is ignored, not an error.
        response = self.get("/health/", token="garbage")
        self.assertEqual(response.json()["authenticated"], False)
        # A good one still identifies the caller there.
        response = self.get("/health/", token=sign(KEY, claims(sub=str(self.alice.id))))
        self.assertEqual(response.json()["user_id"], self.alice.id)

    def test_exempt_is_a_prefix_not_a_substring(self):
        self.assert401(self.get("/healthz"), "missing_assertion", "authgate assertion missing")

    def test_drf_view_behind_the_middleware_verifies_once(self):
        token = sign(KEY, claims(sub=str(self.alice.id)))
        with mock.patch(
            "authgate_django.users.verify_assertion", wraps=verification.verify_assertion
        ) as verify:
            response = self.get("/drf/whoami/", token=token)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(verify.call_count, 1)

    @override_settings(
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "authgate_django.middleware.AuthgateAssertionMiddleware",
            # Misplaced after ours: the assertion's user must still win over the (empty) session.
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ]
    )
    def test_assertion_wins_over_later_auth_middleware(self):
        response = self.get(token=sign(KEY, claims(sub=str(self.alice.id))))
        self.assertEqual(response.json()["user_id"], self.alice.id)

    @override_settings(AUTHGATE={"ISSUER": "https://authgate.example.com", "AUDIENCE": "lms"})
    def test_misconfiguration_fails_at_startup(self):
        with self.assertRaisesMessage(ImproperlyConfigured, "Set exactly one of"):
            AuthgateAssertionMiddleware(lambda request: None)
