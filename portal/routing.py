"""Websocket routes; the chat app adds its consumers here."""

from django.urls import URLPattern

from portal.chat.routing import websocket_urlpatterns as chat_websocket_urlpatterns

websocket_urlpatterns: list[URLPattern] = [*chat_websocket_urlpatterns]
