"""Top-level URLs of the portal."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal.chat import views as chat_views
from portal.front import views as front_views
from portal.health.views import health
from portal.metrics.views import metrics
from portal.signed.views import SignedView
from teams.login import login

# The admin is the portal's console: branded as the portal, its "View site" going to the front door.
admin.site.site_header = "Model portal"
admin.site.site_title = "Model portal"
admin.site.index_title = "Console"
admin.site.site_url = "/"

urlpatterns = [
    path("", front_views.home, name="home"),
    path("favicon.ico", front_views.favicon, name="favicon"),
    path("admin/login/", login, name="login"),
    path("admin/console/audit/", include("audit.urls")),
    path("admin/console/", include("portal.console.urls")),
    path("admin/", admin.site.urls),
    path("v1/", include("portal.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/<str:pipeline>", SignedView.as_view(), name="signed-api"),
    path("chat/", include("portal.chat.urls")),
    path("leaderboard/", chat_views.leaderboard, name="leaderboard"),
    path("metrics", metrics, name="metrics"),
    path("health", health, name="health"),
]
if settings.SSO_ENABLED:
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
