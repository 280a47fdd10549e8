from django.http import JsonResponse
from rest_framework.exceptions import PermissionDenied
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken

from .products import PRODUCTS


class ProductPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class ProductSearchView(APIView):
    def get(self, request):
        q = request.query_params.get("q", "").strip().lower()
        matches = [p for p in PRODUCTS if q in p["name"].lower()]
        paginator = ProductPagination()
        page = paginator.paginate_queryset(matches, request, view=self)
        return paginator.get_paginated_response(page)


class ProfileView(APIView):
    def get(self, request, id):
        # The gateway's assertion says who is calling; a valid one for bob still cannot read alice.
        if request.user.id != id:
            raise PermissionDenied("you may only read your own profile")
        user = request.user
        return Response({"id": user.id, "username": user.username, "email": user.email})


class LogoutView(APIView):
    def post(self, request):
        raw = request.data.get("refresh") if isinstance(request.data, dict) else None
        if raw:
            try:
                token = RefreshToken(raw)
            except TokenError:
                return Response({"detail": "refresh token invalid or already blacklisted"}, status=400)
            if str(token.get(jwt_settings.USER_ID_CLAIM)) != str(request.user.id):
                raise PermissionDenied("refresh token belongs to another user")
            token.blacklist()
        return Response({"detail": "logged out"})


class WhoAmIView(APIView):
    def get(self, request):
        return Response({"user_id": request.user.id, "username": request.user.username, "claims": request.auth})


def health(request):
    return JsonResponse({"status": "ok"})
