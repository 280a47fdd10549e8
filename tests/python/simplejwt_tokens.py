"""Tokens minted and judged by the real djangorestframework-simplejwt.

The e2e tests use it to show that authgate agrees with DRF's own `JWTAuthentication` on which
tokens are access tokens.

    python3 simplejwt_tokens.py mint SECRET USER_ID   -> JSON {name: token}
    python3 simplejwt_tokens.py judge SECRET < JSON   -> JSON {name: "ok" | "refused: ..."}
"""

import json
import sys
from datetime import timedelta

import django
from django.conf import settings


def setup(secret: str) -> None:
    settings.configure(
        SECRET_KEY="authgate-tests-not-a-django-secret",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "rest_framework",
            "rest_framework_simplejwt",
        ],
        DATABASES={},
        USE_TZ=True,
        SIMPLE_JWT={
            "ALGORITHM": "HS256",
            "SIGNING_KEY": secret,
            "USER_ID_FIELD": "id",
            "USER_ID_CLAIM": "user_id",
            "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
            "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
            "SLIDING_TOKEN_LIFETIME": timedelta(minutes=15),
            "SLIDING_TOKEN_REFRESH_LIFETIME": timedelta(days=1),
        },
    )
    django.setup()


class User:
    """What `for_user` reads: the id field and `is_active`."""

    def __init__(self, user_id: int) -> None:
        self.id = user_id
        self.pk = user_id
        self.is_active = True


def mint(user_id: int) -> dict:
    from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, SlidingToken

    user = User(user_id)
    refresh = RefreshToken.for_user(user)
    access = refresh.access_token
    # What ROTATE_REFRESH_TOKENS + BLACKLIST_AFTER_ROTATION leaves behind: the old refresh
    # token, which Django blacklists, and a new pair.
    rotated = RefreshToken.for_user(user)
    expired = AccessToken.for_user(user)
    expired.set_exp(lifetime=-timedelta(minutes=5))
    return {
        "access": str(access),
        "refresh": str(refresh),
        "rotated_refresh": str(rotated),
        "sliding": str(SlidingToken.for_user(user)),
        "expired_access": str(expired),
    }


def judge(tokens: dict) -> dict:
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import InvalidToken

    auth = JWTAuthentication()
    out = {}
    for name, raw in tokens.items():
        try:
            auth.get_validated_token(raw.encode())
            out[name] = "ok"
        except InvalidToken as e:
            out[name] = "refused: " + str(e.detail.get("detail", e))
    return out


def main() -> None:
    command, secret = sys.argv[1], sys.argv[2]
    setup(secret)
    if command == "mint":
        print(json.dumps(mint(int(sys.argv[3]))))
    elif command == "judge":
        print(json.dumps(judge(json.load(sys.stdin))))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
