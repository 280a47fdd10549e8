#!/usr/bin/env python3
"""Runs authgate_django's tests with Django's own test runner.

    python3 integrations/django/runtests.py [-v 2] [tests.test_jwks ...]

Needs Django, djangorestframework, PyJWT and cryptography (tests/python/requirements.txt).
Settings are configured here, so no project is needed. Exits non-zero if any test fails.
"""

import argparse
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The source tree first, so a stale installed copy of authgate_django is never what is tested.
sys.path.insert(0, HERE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", nargs="*", default=["tests"])
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    parser.add_argument("--failfast", action="store_true")
    args = parser.parse_args()

    import django
    from django.conf import settings

    from tests.helpers import authgate_settings, ed25519_key

    settings.configure(
        DEBUG=False,
        SECRET_KEY="authgate-django-tests-not-a-secret",
        ALLOWED_HOSTS=["testserver"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "rest_framework",
            "authgate_django",
        ],
        MIDDLEWARE=[],
        ROOT_URLCONF="tests.urls",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        # Tests create users; the default hasher's 1M PBKDF2 rounds would dominate the run.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [
                "authgate_django.authentication.AuthgateAssertionAuthentication"
            ],
            "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        },
        # A valid baseline so the system checks pass; tests override it as they need.
        AUTHGATE=authgate_settings(VERIFYING_KEY=ed25519_key().pem),
        LOGGING_CONFIG=None,
    )
    django.setup()
    # Refusals are what these tests provoke; the expected ones are checked with assertLogs.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    logging.getLogger("authgate_django").addHandler(logging.NullHandler())

    from django.test.runner import DiscoverRunner

    runner = DiscoverRunner(verbosity=args.verbosity, failfast=args.failfast, top_level=HERE)
    failures = runner.run_tests(args.labels)
    return 1 if failures else 0


if __name__ == "__main__":
    os.chdir(HERE)
    sys.exit(main())
