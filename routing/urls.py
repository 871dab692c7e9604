from django.urls import path

from routing import views

urlpatterns = [
    path("translate", views.TranslateView.as_view(), name="translate"),
    path("detect-language", views.DetectLanguageView.as_view(), name="detect-language"),
    path("classify", views.ClassifyView.as_view(), name="classify"),
    path("embeddings", views.EmbeddingsView.as_view(), name="embeddings"),
    path("rerank", views.RerankView.as_view(), name="rerank"),
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("audio/transcriptions", views.TranscriptionsView.as_view(), name="audio-transcriptions"),
    path("intent", views.IntentView.as_view(), name="intent"),
    path("models", views.ModelsView.as_view(), name="models"),
    path("inferences/<uuid:pk>", views.InferenceDetailView.as_view(), name="inference-detail"),
    path("feedback", views.FeedbackView.as_view(), name="feedback"),
]
