from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from config.metrics import metrics_view

admin.site.site_header = "Modelgate operations"
admin.site.site_title = "Modelgate"
admin.site.index_title = "Tenants, models, routing and budgets"

urlpatterns = [
    path("", views.index, name="index"),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", metrics_view, name="metrics"),
    path("playground", views.playground, name="playground"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/", include("tenants.urls")),
    path("v1/", include("routing.urls")),
    path("v1/", include("embeddings.urls")),
    path("v1/", include("billing.urls")),
]

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
