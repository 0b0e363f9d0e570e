"""The admin's (and the chat page's) login page: the password form with a single sign-on button, or,
with PASSWORD_LOGIN off, straight to the provider (a password posted anyway is refused)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseForbidden
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

LOGIN_TEMPLATE = "teams/login.html"


def _next(request: HttpRequest, default: str) -> str:
    wanted = request.GET.get("next") or default
    safe = url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure())
    return wanted if safe else default


def sso_url(request: HttpRequest, default: str = "/admin/") -> str:
    return reverse("oidc_authentication_init") + "?" + urlencode({"next": _next(request, default)})


def login(request: HttpRequest) -> HttpResponseBase:
    if settings.PASSWORD_LOGIN:
        admin.site.login_template = LOGIN_TEMPLATE
        extra = {"sso_url": sso_url(request)} if settings.SSO_ENABLED else {}
        response: HttpResponse = admin.site.login(request, extra_context=extra)
        return response
    if request.method == "POST":
        return HttpResponseForbidden("Password login is off here: sign in with single sign-on.")
    return redirect(sso_url(request))


def chat_login(request: HttpRequest) -> HttpResponseBase:
    """The chat page's login (ordinary accounts): its form with the single sign-on button, or the provider."""
    if settings.PASSWORD_LOGIN:
        extra = {"sso_url": sso_url(request, "/chat/")} if settings.SSO_ENABLED else {}
        return LoginView.as_view(template_name="chat/login.html", extra_context=extra)(request)
    if request.method == "POST":
        return HttpResponseForbidden("Password login is off here: sign in with single sign-on.")
    return redirect(sso_url(request, "/chat/"))
