from django.http import JsonResponse
from django.urls import path
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from authgate_django.authentication import AuthgateAssertionAuthentication


class DRFWhoAmI(APIView):
    authentication_classes = [AuthgateAssertionAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"user_id": request.user.id, "username": request.user.username, "claims": request.auth})


def plain_whoami(request):
    user = request.user
    return JsonResponse(
        {
            "authenticated": user.is_authenticated,
            "user_id": user.id,
            "claims": getattr(request, "auth", "unset"),
        }
    )


urlpatterns = [
    path("drf/whoami/", DRFWhoAmI.as_view()),
    path("plain/whoami/", plain_whoami),
    path("health/", plain_whoami),
    path("healthz", plain_whoami),
]
