from django.urls import path

from billing import views

urlpatterns = [
    path("budget", views.BudgetView.as_view(), name="budget"),
    path("alerts", views.AlertsView.as_view(), name="alerts"),
    path("usage", views.UsageView.as_view(), name="usage"),
]
