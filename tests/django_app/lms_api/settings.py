"""The LMS-style API that stands behind authgate in the e2e tests.

It trusts only the gateway's signed assertion (authgate_django); simplejwt is here for what the
real API still does itself: issuing, refreshing and blacklisting tokens. Configuration comes from
the environment, set by serve.py's caller:

    JWT_SECRET          simplejwt's HS256 signing key (the gateway validates with the same one)
    AUTHGATE_JWKS_URL   the gateway's http://<admin>/.well-known/jwks.json
    AUTHGATE_ISSUER     the gateway's assertion issuer
    AUTHGATE_AUDIENCE   this upstream's name in the gateway config (e.g. "lms")
    AUTHGATE_ASSERTION_HEADER  optional, default X-Auth-Assertion
"""

import os
from datetime import timedelta

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "authgate-e2e-django-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "authgate_django",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "lms_api.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # serve.py --db sets this before Django starts.
        "NAME": os.environ.get("LMS_API_DB", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
# Test fixture only: the default 1M PBKDF2 rounds would make every login take ~0.5 s.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REST_FRAMEWORK = {
    # The assertion and nothing else: not X-Auth-Subject, not the bearer token itself.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "authgate_django.authentication.AuthgateAssertionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": os.environ.get("JWT_SECRET", ""),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
}

AUTHGATE = {
    "JWKS_URL": os.environ.get("AUTHGATE_JWKS_URL"),
    "ISSUER": os.environ.get("AUTHGATE_ISSUER"),
    "AUDIENCE": os.environ.get("AUTHGATE_AUDIENCE"),
    "ASSERTION_HEADER": os.environ.get("AUTHGATE_ASSERTION_HEADER", "X-Auth-Assertion"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        # One line per request (runserver's access log), and why assertions were refused.
        "django.server": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "authgate_django": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
