"""Plain Django middleware for views outside DRF (function views, plain JSON endpoints).

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",  # if used: before this one
        "authgate_django.middleware.AuthgateAssertionMiddleware",
    ]

Every request outside ``EXEMPT_PATHS`` must carry a valid assertion or is answered 401 here,
before any view runs. On success ``request.user`` is the mapped user and ``request.auth`` the
claims.
"""

from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from .exceptions import AssertionRejected
from .settings import api_settings
from .users import authenticate_assertion, get_assertion

# Where the result is left for AuthgateAssertionAuthentication, so a DRF view behind this
# middleware does not verify the same assertion twice.
REQUEST_CACHE_ATTR = "_authgate_result"
WWW_AUTHENTICATE = 'AuthgateAssertion realm="api"'


def unauthorized(exc: AssertionRejected) -> JsonResponse:
    response = JsonResponse({"error": exc.code, "message": exc.message}, status=401)
    response["WWW-Authenticate"] = WWW_AUTHENTICATE
    # A 401 about one caller's assertion must never be served from a shared cache to another.
    response["Cache-Control"] = "no-store"
    return response


class AuthgateAssertionMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # Validate the settings when the server starts, not on the first request.
        api_settings.validate()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        exempt = request.path_info.startswith(api_settings.EXEMPT_PATHS)
        token = get_assertion(request)
        try:
            user, claims = authenticate_assertion(token)
        except AssertionRejected as exc:
            if not exempt:
                return unauthorized(exc)
            # Exempt paths (health checks) work with or without an identity: a missing or bad
            # assertion there just leaves the request anonymous. A user set by earlier
            # middleware (e.g. a session for /admin/) is left alone.
            if not hasattr(request, "user"):
                from django.contrib.auth.models import AnonymousUser  # needs the app registry

                request.user = AnonymousUser()
            request.auth = None
            return self.get_response(request)

        request.user = user
        # Also what django.contrib.auth's lazy request.user returns, so the assertion wins even
        # if AuthenticationMiddleware is (wrongly) placed after this middleware.
        request._cached_user = user
        request.auth = claims
        setattr(request, REQUEST_CACHE_ATTR, (token, (user, claims)))
        return self.get_response(request)
