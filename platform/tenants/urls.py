from django.urls import path

from tenants import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="me"),
    path("keys", views.ApiKeyListView.as_view(), name="key-list"),
    path("keys/<str:prefix>", views.ApiKeyDetailView.as_view(), name="key-detail"),
]
