"""Websocket routes: the chat page's and the console's."""

from django.urls import URLPattern

from portal.chat.routing import websocket_urlpatterns as chat_websocket_urlpatterns
from portal.console.routing import websocket_urlpatterns as console_websocket_urlpatterns

websocket_urlpatterns: list[URLPattern] = [*chat_websocket_urlpatterns, *console_websocket_urlpatterns]
