"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Initialise Django before importing anything that touches models.
django_asgi_app = get_asgi_application()

from portal import lifecycle  # noqa: E402
from portal.gateway.gateway import current  # noqa: E402
from portal.handlers import APIHandler, route_by_path  # noqa: E402

current()  # build this process's gateway (its live state, for every door) before the first request
lifecycle.install()

# /health too: probes need no sessions or CSRF, and send the pod's IP as Host (no ALLOWED_HOSTS check).
django_asgi_app = route_by_path(("/v1/", "/health"), APIHandler(), django_asgi_app)
if settings.SERVE_STATIC:
    # Embedded mode has no nginx in front: serve the admin's and the chat page's files.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
