from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from . import views

urlpatterns = [
    # simplejwt's own views carry no authentication classes: reachable without an assertion.
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
    path("api/products/search/", views.ProductSearchView.as_view()),
    path("api/users/<int:id>/profile/", views.ProfileView.as_view()),
    path("api/auth/logout/", views.LogoutView.as_view()),
    path("api/whoami/", views.WhoAmIView.as_view()),
    path("health/", views.health),
]
