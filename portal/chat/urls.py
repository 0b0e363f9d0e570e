"""URLs of the chat page, its conversation endpoints and the arena."""

from django.contrib.auth import views as auth_views
from django.urls import path

from portal.chat import views
from teams.login import chat_login

app_name = "chat"

urlpatterns = [
    path("", views.chat_page, name="page"),
    path("c/<int:conversation_id>/", views.chat_page, name="conversation"),
    # The admin's login page accepts staff only; chat users are ordinary accounts.
    path("login/", chat_login, name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="chat:login"), name="logout"),
    path("arena/", views.arena_page, name="arena"),
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("api/conversations/", views.conversation_list, name="conversation-list"),
    path("api/conversations/<int:conversation_id>/rename/", views.conversation_rename, name="rename"),
    path("api/conversations/<int:conversation_id>/delete/", views.conversation_delete, name="delete"),
]
