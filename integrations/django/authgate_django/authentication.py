"""DRF authentication from the authgate assertion, the drop-in for simplejwt's JWTAuthentication.

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "authgate_django.authentication.AuthgateAssertionAuthentication",
        ],
    }
"""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from .exceptions import AssertionRejected
from .middleware import REQUEST_CACHE_ATTR
from .users import authenticate_assertion, get_assertion


class AuthgateAssertionAuthentication(authentication.BaseAuthentication):
    """
    Authenticates a request by the assertion authgate signed for it.

    No header: None, so the request is anonymous and permission classes such as IsAuthenticated
    answer 401. An invalid header: AuthenticationFailed (401) saying why, without the token.
    On success ``request.user`` is the mapped user and ``request.auth`` the assertion's claims.
    """

    www_authenticate_realm = "api"

    def authenticate(self, request: Any) -> tuple[Any, dict[str, Any]] | None:
        token = get_assertion(request)
        if token is None:
            return None
        django_request = getattr(request, "_request", request)
        cached = getattr(django_request, REQUEST_CACHE_ATTR, None)
        if cached is not None and cached[0] == token:
            return cached[1]
        try:
            result = authenticate_assertion(token)
        except AssertionRejected as exc:
            # A dict detail gives the body {"detail", "code"}, as simplejwt's InvalidToken does.
            raise exceptions.AuthenticationFailed(
                {"detail": exc.message, "code": exc.code}, code=exc.code
            ) from None
        setattr(django_request, REQUEST_CACHE_ATTR, (token, result))
        return result

    def authenticate_header(self, request: Any) -> str:
        # Any value makes DRF answer 401 (with WWW-Authenticate) instead of 403.
        return f'AuthgateAssertion realm="{self.www_authenticate_realm}"'
