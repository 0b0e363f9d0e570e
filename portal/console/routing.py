"""Websocket routes of the console, included by `portal.routing`."""

from django.urls import path

from portal.console.live import FleetConsumer

websocket_urlpatterns = [path("ws/console/fleet/", FleetConsumer.as_asgi())]
