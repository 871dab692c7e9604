from django.urls import path

from billing import views

urlpatterns = [
    path("budget", views.BudgetView.as_view(), name="budget"),
]
