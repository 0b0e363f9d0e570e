"""Pages and small JSON endpoints of the chat app; the streaming lives in the consumer."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from portal.chat import selectors, services
from portal.chat.owners import Owner, owner_for
from portal.chat.services import ChatError


def _owner(request: HttpRequest) -> Owner | None:
    if (
        not request.user.is_authenticated
        and settings.CHAT_ALLOW_ANONYMOUS
        and not request.session.session_key
    ):
        # The websocket finds an anonymous visitor by the session, so make sure one exists.
        request.session.save()
    return owner_for(request.user, request.session.session_key)


def _page_context(owner: Owner, **extra: Any) -> dict[str, Any]:
    return {"conversations": selectors.list_conversations(owner=owner), **extra}


@require_GET
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    """Render the chat page, resuming a conversation when its id is in the URL."""
    owner = _owner(request)
    if owner is None:
        return redirect_to_login(request.get_full_path(), reverse("chat:login"))
    current = None
    if conversation_id is not None:
        conversation = selectors.get_conversation(owner=owner, conversation_id=conversation_id)
        if conversation is None:
            raise Http404("No such conversation.")
        current = selectors.conversation_payload(conversation)
    return render(
        request, "chat/chat.html", _page_context(owner, current=current, current_id=conversation_id)
    )


@require_GET
def arena_page(request: HttpRequest) -> HttpResponse:
    """Render the side-by-side arena."""
    owner = _owner(request)
    if owner is None:
        return redirect_to_login(request.get_full_path(), reverse("chat:login"))
    return render(request, "chat/arena.html", {})


@require_GET
def leaderboard(request: HttpRequest) -> HttpResponse:
    """Render models ranked by Elo from arena votes; public, like the LMSYS board."""
    return render(request, "chat/leaderboard.html", {"standings": selectors.get_leaderboard()})


def _error(exc: ChatError) -> JsonResponse:
    status = 404 if exc.code == "not_found" else 400
    return JsonResponse({"error": {"message": exc.message, "code": exc.code}}, status=status)


@require_GET
def conversation_list(request: HttpRequest) -> JsonResponse:
    """Return the owner's conversations (id, title, model, last activity)."""
    owner = _owner(request)
    if owner is None:
        return JsonResponse({"error": {"message": "Log in first.", "code": "unauthenticated"}}, status=401)
    rows = [
        {"id": c.pk, "title": c.title, "model_name": c.model_name, "updated_at": c.updated_at.isoformat()}
        for c in selectors.list_conversations(owner=owner)
    ]
    return JsonResponse({"conversations": rows})


@require_POST
def conversation_rename(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """Rename a conversation from a JSON body {"title": ...}."""
    owner = _owner(request)
    if owner is None:
        return JsonResponse({"error": {"message": "Log in first.", "code": "unauthenticated"}}, status=401)
    try:
        title = json.loads(request.body or b"{}").get("title", "")
        if not isinstance(title, str):
            raise TypeError(title)
        conversation = services.rename_conversation(owner=owner, conversation_id=conversation_id, title=title)
    except (ValueError, AttributeError, TypeError, RecursionError):  # not JSON, too deep, not a title
        return _error(ChatError("Send a JSON body with a string title.", code="invalid_request"))
    except ChatError as exc:
        return _error(exc)
    return JsonResponse({"id": conversation.pk, "title": conversation.title})


@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """Delete a conversation."""
    owner = _owner(request)
    if owner is None:
        return JsonResponse({"error": {"message": "Log in first.", "code": "unauthenticated"}}, status=401)
    try:
        services.delete_conversation(owner=owner, conversation_id=conversation_id)
    except ChatError as exc:
        return _error(exc)
    return JsonResponse({"deleted": conversation_id})
