"""AuthgateAssertionAuthentication in DRF views, and the user mapping behind both integrations."""

import time
from unittest import skipIf

from django.contrib.auth import get_user_model
from django.test import TestCase, override_settings

try:
    from rest_framework_simplejwt.tokens import AccessToken
except ImportError:  # simplejwt is only needed for one test
    AccessToken = None

from .helpers import DELETE, authgate_settings, claims, ed25519_key, p256_key, sign

KEY = ed25519_key()
URL = "/drf/whoami/"
User = get_user_model()


@override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem))
class DRFAuthenticationTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.alice = User.objects.create_user("alice", "alice@example.com", "alice-pass")

    def get(self, token=None, **headers):
        if token is not None:
            headers["X-Auth-Assertion"] = token
        return self.client.get(URL, headers=headers)

    def assert401(self, response, detail, code):
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response["WWW-Authenticate"], 'AuthgateAssertion realm="api"')
        self.assertEqual(response.json(), {"detail": detail, "code": code})

    def test_valid_assertion(self):
        payload = claims(sub=str(self.alice.id))
        response = self.get(sign(KEY, payload))
        self.assertEqual(response.status_code, 200)
        self.assertEqual(
            response.json(), {"user_id": self.alice.id, "username": "alice", "claims": payload}
        )

    def test_no_assertion_is_anonymous_401(self):
        response = self.get()
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response["WWW-Authenticate"], 'AuthgateAssertion realm="api"')
        self.assertEqual(response.json(), {"detail": "Authentication credentials were not provided."})

    def test_empty_header_is_no_assertion(self):
        self.assertEqual(self.get("").json(), {"detail": "Authentication credentials were not provided."})

    def test_expired(self):
        now = int(time.time())
        token = sign(KEY, claims(sub=str(self.alice.id), iat=now - 200, exp=now - 100))
        response = self.get(token)
        self.assert401(response, "authgate assertion expired", "assertion_expired")
        self.assertNotIn(token.encode(), response.content)

    def test_forged(self):
        token = sign(KEY, claims(sub=str(self.alice.id)), signer=ed25519_key())
        self.assert401(self.get(token), "authgate assertion signature invalid", "invalid_assertion")

    def test_wrong_audience(self):
        token = sign(KEY, claims(sub=str(self.alice.id), aud="billing"))
        self.assert401(self.get(token), "authgate assertion audience mismatch", "invalid_assertion")

    @skipIf(AccessToken is None, "djangorestframework-simplejwt not installed")
    def test_other_identity_headers_are_not_trusted(self):
        # Only the signature counts: not the gateway's plain identity headers, not a simplejwt
        # access token that would satisfy JWTAuthentication.
        access = str(AccessToken.for_user(self.alice))
        response = self.get(**{"X-Auth-Subject": str(self.alice.id), "Authorization": f"Bearer {access}"})
        self.assertEqual(response.status_code, 401)

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, ASSERTION_HEADER="X-Edge-Identity"))
    def test_configured_header_name(self):
        token = sign(KEY, claims(sub=str(self.alice.id)))
        self.assertEqual(self.get(token).status_code, 401)
        self.assertEqual(self.get(**{"X-Edge-Identity": token}).status_code, 200)


class UserMappingTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.alice = User.objects.create_user("alice", "alice@example.com", "alice-pass")
        cls.bob = User.objects.create_user("bob", "bob@example.com", "bob-pass")

    def get(self, **claim_overrides):
        return self.client.get(URL, headers={"X-Auth-Assertion": sign(KEY, claims(**claim_overrides))})

    def assert401(self, response, detail, code):
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.json(), {"detail": detail, "code": code})

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem))
    def test_by_id(self):
        self.assertEqual(self.get(sub=str(self.bob.id)).json()["username"], "bob")
        self.assert401(self.get(sub="999999"), "authgate assertion user not found", "user_not_found")
        self.assert401(self.get(sub="alice"), "authgate assertion user not found", "user_not_found")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, USER_ID_FIELD="username"))
    def test_by_username(self):
        self.assertEqual(self.get(sub="alice").json()["user_id"], self.alice.id)
        self.assert401(self.get(sub=str(self.alice.id)), "authgate assertion user not found", "user_not_found")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, USER_ID_CLAIM="user_id"))
    def test_other_claim(self):
        self.assertEqual(self.get(user_id=str(self.bob.id)).json()["username"], "bob")
        self.assert401(self.get(user_id=DELETE), "authgate assertion has no user id claim 'user_id'",
                       "user_not_found")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem))
    def test_inactive_user(self):
        User.objects.filter(pk=self.bob.pk).update(is_active=False)
        self.assert401(self.get(sub=str(self.bob.id)), "authgate assertion user inactive", "user_inactive")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, AUTO_CREATE_USERS=True))
    def test_auto_create_by_id(self):
        response = self.get(sub="4242")
        self.assertEqual(response.status_code, 200)
        user = User.objects.get(pk=4242)
        self.assertEqual(response.json()["user_id"], 4242)
        self.assertEqual(user.username, "authgate-4242")
        self.assertFalse(user.has_usable_password())
        self.assertEqual(self.get(sub="4242").status_code, 200)
        self.assertEqual(User.objects.filter(pk=4242).count(), 1)
        # A non-integer subject cannot become an integer primary key.
        self.assert401(self.get(sub="carol"), "authgate assertion user not found", "user_not_found")
        self.assertFalse(User.objects.filter(username="carol").exists())

    @override_settings(
        AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, AUTO_CREATE_USERS=True, USER_ID_FIELD="username")
    )
    def test_auto_create_by_username(self):
        response = self.get(sub="carol")
        self.assertEqual(response.status_code, 200)
        carol = User.objects.get(username="carol")
        self.assertEqual(response.json()["user_id"], carol.id)
        self.assertFalse(carol.has_usable_password())

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem, AUTO_CREATE_USERS=True))
    def test_auto_create_does_not_revive_inactive_users(self):
        User.objects.filter(pk=self.bob.pk).update(is_active=False)
        self.assert401(self.get(sub=str(self.bob.id)), "authgate assertion user inactive", "user_inactive")

    @override_settings(AUTHGATE=authgate_settings(VERIFYING_KEY=KEY.pem))
    def test_no_auto_create_by_default(self):
        before = User.objects.count()
        self.assert401(self.get(sub="5151"), "authgate assertion user not found", "user_not_found")
        self.assertEqual(User.objects.count(), before)


class ES256EndToEndTests(TestCase):
    def test_es256_through_drf(self):
        key = p256_key()
        user = User.objects.create_user("dora")
        with self.settings(AUTHGATE=authgate_settings(VERIFYING_KEY=key.pem)):
            response = self.client.get(URL, headers={"X-Auth-Assertion": sign(key, claims(sub=str(user.id)))})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["username"], "dora")
