"""Routes of the OpenAI-compatible API, mounted at `/v1/`."""

from django.urls import path, re_path

from portal.api import views
from portal.api.errors import not_found

app_name = "openai"
urlpatterns = [
    path("models", views.ModelsView.as_view(), name="models"),
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", views.CompletionsView.as_view(), name="completions"),
    path("embeddings", views.EmbeddingsView.as_view(), name="embeddings"),
    re_path(r"^(?P<path>.*)$", not_found),
]
