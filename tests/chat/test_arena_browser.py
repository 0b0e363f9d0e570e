"""The arena and the chat page's layout in a real Chromium, at desktop and phone width.

The arena on the default install's footing: what it needs before Battle, no
names in anonymous mode, the chat page's sampling settings. The chat page: full
conversation titles, a conversation list that folds away at phone width.

The portal is live; its models are workers registered without a process (the
page only lists them), and a battle's websocket is answered by the test.
Screenshots go to test-artifacts/chat/ (git-ignored).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from portal.chat.models import Conversation
from registry.services.workers import WorkerRegistration, register_worker
from tests.browser import PASSWORD, log_in_to_chat
from tests.portal_process import PortalProcess
from tests.processes import REPO_ROOT

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "chat"
SIZES = ((1400, 900), (390, 844))


@pytest.fixture
def portal(live_portal: PortalProcess) -> PortalProcess:
    """The module's portal with one chat model online, as the default install has, and a staff user."""
    get_user_model().objects.create_user("ada", password=PASSWORD, is_staff=True)
    register_worker(
        registration=WorkerRegistration(
            identity="w1", address="http://127.0.0.1:9301", model_names=("smollm2",), heartbeat_interval=60
        )
    )
    return live_portal


TITLE = "Trip to Lisbon in May, cheap"


@pytest.fixture
def conversation(portal: PortalProcess) -> Conversation:
    return Conversation.objects.create(user=get_user_model().objects.get(username="ada"), title=TITLE)


def test_the_chat_page_shows_whole_titles_and_folds_the_list_on_a_phone(conversation, portal, pages) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        page = pages.open(width, height)
        log_in_to_chat(page, portal.url)
        link = page.locator("#conversations li a").first
        assert link.get_attribute("title") == TITLE
        assert link.evaluate("a => a.scrollWidth <= a.clientWidth") or width < 600  # not cut at desktop width
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        sidebar = page.locator("#sidebar")
        if width < 600:
            assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0  # folded away
            assert page.locator("#thread").bounding_box()["width"] >= width - 2
            page.click("#toggle-sidebar")
            page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
            assert link.is_visible()
            page.screenshot(path=str(ARTIFACTS / f"chat-layout-{width}-list.png"))
            page.mouse.click(width - 20, height // 2)  # beside the list: it folds away again
            page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 0")
        else:
            assert page.locator("#toggle-sidebar").is_hidden()
        page.screenshot(path=str(ARTIFACTS / f"chat-layout-{width}.png"))


def test_with_one_chat_model_the_arena_says_what_it_needs_before_battle(portal, pages) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        page = pages.open(width, height)
        log_in_to_chat(page, portal.url)
        page.goto(f"{portal.url}/chat/arena/")
        needs = page.locator("#arena-needs")
        needs.wait_for(state="visible", timeout=20_000)
        assert "needs two chat models" in needs.inner_text()
        assert "serves one: smollm2" in needs.inner_text()
        assert page.locator("#arena-deploy").get_attribute("href") == "/admin/fleet/deployment/add/"
        assert page.locator("#send").is_disabled()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"arena-one-model-{width}.png"))


def answer_battles(page: Any) -> list[dict[str, Any]]:
    """Answer the page's websocket: two models, and each battle started anonymously and finished."""
    sent: list[dict[str, Any]] = []
    started = {"type": "arena.started", "battle_id": 1, "anonymous": True, "model_a": None, "model_b": None}
    replies = [started, {"type": "arena.token", "side": "a", "text": "Bonjour"}, {"type": "arena.finished"}]

    def handler(ws: Any) -> None:
        ws.send(json.dumps({"type": "models.list", "models": ["smollm2", "qwen"]}))

        def on_message(message: str | bytes) -> None:
            sent.append(json.loads(message))
            if sent[-1]["type"] == "arena.send":
                for reply in replies:
                    ws.send(json.dumps(reply))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws/chat/$"), handler)
    return sent


def test_an_anonymous_battle_shows_no_names_and_sends_the_chat_pages_settings(portal, pages) -> None:
    for width, height in SIZES:
        page = pages.open(width, height)
        log_in_to_chat(page, portal.url)
        sent = answer_battles(page)
        page.goto(f"{portal.url}/chat/arena/")
        page.wait_for_function("document.querySelector('#model-b').options.length === 2")
        assert page.locator("#arena-needs").is_hidden()
        assert page.locator("#model-a").is_hidden()
        assert page.locator("#model-b").is_hidden()
        assert "smollm2" not in page.locator(".arena").inner_text()
        page.click("#toggle-settings")
        page.fill("#temperature", "0.3")
        page.fill("#prompt", "Say hello.")
        page.click("#send")
        page.locator("#vote-bar.open").wait_for(timeout=10_000)
        assert "smollm2" not in page.locator(".arena").inner_text()
        battle = next(message for message in sent if message["type"] == "arena.send")
        assert battle["anonymous"] is True
        assert battle["params"] == {"temperature": "0.3", "top_p": "0.95", "max_tokens": "256"}
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        if (
            width < 600
        ):  # the settings fold away; the answers stack, the screen's width, clear of the vote bar
            assert page.locator("#settings").is_hidden()
            page.locator("#side-b").scroll_into_view_if_needed()
            side, bar = page.locator("#side-b").bounding_box(), page.locator("#vote-bar").bounding_box()
            assert side["width"] >= width - 40
            assert side["y"] + 40 <= bar["y"]
            page.screenshot(path=str(ARTIFACTS / f"arena-anonymous-{width}-b.png"))
            page.locator("#side-a").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"arena-anonymous-{width}.png"))
