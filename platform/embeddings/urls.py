from django.urls import path

from embeddings import views

urlpatterns = [
    path("collections", views.CollectionsView.as_view(), name="collections"),
    path("collections/<str:ref>", views.CollectionDetailView.as_view(), name="collection-detail"),
    path("collections/<str:ref>/documents", views.DocumentsView.as_view(), name="collection-documents"),
    # A custom method, not a sub-path: a document may be called "delete".
    path("collections/<str:ref>/documents:delete", views.DocumentsDeleteView.as_view(), name="collection-documents-delete"),
    path("collections/<str:ref>/documents/<path:external_id>", views.DocumentDetailView.as_view(), name="collection-document"),
    path("collections/<str:ref>/search", views.SearchView.as_view(), name="collection-search"),
    path("collections/<str:ref>/jobs", views.JobsView.as_view(), name="collection-jobs"),
    path("jobs/<uuid:pk>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<uuid:pk>/resume", views.JobResumeView.as_view(), name="job-resume"),
    path("jobs/<uuid:pk>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
]
