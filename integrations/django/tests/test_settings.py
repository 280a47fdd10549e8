from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, override_settings

from authgate_django.apps import check_settings
from authgate_django.settings import api_settings

from .helpers import authgate_settings, ed25519_key

KEY = ed25519_key()
JWKS = "http://127.0.0.1:9090/.well-known/jwks.json"


class DefaultsTests(SimpleTestCase):
    @override_settings(AUTHGATE=authgate_settings(JWKS_URL=JWKS))
    def test_defaults(self):
        self.assertEqual(api_settings.ASSERTION_HEADER, "X-Auth-Assertion")
        self.assertEqual(api_settings.assertion_meta_key, "HTTP_X_AUTH_ASSERTION")
        self.assertIsNone(api_settings.VERIFYING_KEY)
        self.assertEqual(api_settings.ALGORITHMS, ("EdDSA", "ES256"))
        self.assertEqual(api_settings.LEEWAY, 5)
        self.assertEqual(api_settings.JWKS_CACHE_TTL, 300)
        self.assertEqual(api_settings.JWKS_TIMEOUT, 2)
        self.assertEqual(api_settings.USER_ID_FIELD, "id")
        self.assertEqual(api_settings.USER_ID_CLAIM, "sub")
        self.assertIs(api_settings.AUTO_CREATE_USERS, False)
        self.assertEqual(api_settings.EXEMPT_PATHS, ())

    @override_settings(
        AUTHGATE=authgate_settings(
            VERIFYING_KEY=KEY.pem, LEEWAY=timedelta(seconds=30), AUDIENCE=["lms", "reports"],
            ASSERTION_HEADER="X-Edge-Identity", EXEMPT_PATHS="/health/",
        )
    )
    def test_normalised_values(self):
        self.assertEqual(api_settings.LEEWAY, 30.0)
        self.assertEqual(api_settings.AUDIENCE, ["lms", "reports"])
        self.assertEqual(api_settings.assertion_meta_key, "HTTP_X_EDGE_IDENTITY")
        self.assertEqual(api_settings.EXEMPT_PATHS, ("/health/",))

    def test_reloads_when_settings_change(self):
        with self.settings(AUTHGATE=authgate_settings(JWKS_URL=JWKS, LEEWAY=1)):
            self.assertEqual(api_settings.LEEWAY, 1)
        with self.settings(AUTHGATE=authgate_settings(JWKS_URL=JWKS, LEEWAY=2)):
            self.assertEqual(api_settings.LEEWAY, 2)

    def test_unknown_attribute(self):
        with self.assertRaises(AttributeError):
            api_settings.NOT_A_SETTING


class ImproperlyConfiguredTests(SimpleTestCase):
    def assertRefused(self, config, fragment):
        with self.settings(AUTHGATE=config):
            with self.assertRaisesMessage(ImproperlyConfigured, fragment):
                api_settings.ISSUER
            errors = check_settings()
            self.assertEqual([e.id for e in errors], ["authgate.E001"])

    def test_not_configured_at_all(self):
        with self.settings(AUTHGATE=None):
            with self.assertRaisesMessage(ImproperlyConfigured, "Set exactly one of"):
                api_settings.ISSUER

    def test_issuer_and_audience_required(self):
        self.assertRefused({"AUDIENCE": "lms", "JWKS_URL": JWKS}, "AUTHGATE['ISSUER']")
        self.assertRefused({"ISSUER": "https://a", "JWKS_URL": JWKS}, "AUTHGATE['AUDIENCE']")
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, AUDIENCE=[]), "AUTHGATE['AUDIENCE']")

    def test_exactly_one_key_source(self):
        self.assertRefused(authgate_settings(), "Set exactly one of")
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, VERIFYING_KEY=KEY.pem), "Set exactly one of")

    def test_jwks_url_must_be_http(self):
        self.assertRefused(authgate_settings(JWKS_URL="file:///etc/passwd"), "http:// or https://")

    def test_verifying_key_must_be_a_public_pem(self):
        self.assertRefused(authgate_settings(VERIFYING_KEY="secret"), "PEM public key")
        broken = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        with self.settings(AUTHGATE=authgate_settings(VERIFYING_KEY=broken)):
            self.assertIn("not a valid PEM public key", check_settings()[0].msg)

    def test_no_none_or_hmac_algorithms(self):
        for alg in ("none", "HS256", "HS512"):
            with self.subTest(alg=alg):
                self.assertRefused(
                    authgate_settings(JWKS_URL=JWKS, ALGORITHMS=["EdDSA", alg]), "must not include"
                )
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, ALGORITHMS=["RS256"]), "does not sign with")
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, ALGORITHMS=[]), "at least one")

    def test_unknown_setting_is_a_typo(self):
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, AUDIENCES="lms"), "AUDIENCES")

    def test_header_name(self):
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, ASSERTION_HEADER="X_Auth"), "ASSERTION_HEADER")

    def test_durations(self):
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, LEEWAY=-1), "LEEWAY")
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, JWKS_TIMEOUT=0), "JWKS_TIMEOUT")
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, JWKS_CACHE_TTL="300"), "JWKS_CACHE_TTL")

    def test_exempt_paths(self):
        self.assertRefused(authgate_settings(JWKS_URL=JWKS, EXEMPT_PATHS=["health/"]), "EXEMPT_PATHS")

    @override_settings(AUTHGATE=authgate_settings(JWKS_URL=JWKS, USER_ID_FIELD="nickname"))
    def test_user_id_field_must_exist(self):
        self.assertEqual([e.id for e in check_settings()], ["authgate.E002"])
