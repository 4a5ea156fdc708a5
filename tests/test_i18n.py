"""The UI's two languages (`mmchat.ui.i18n`, `mmchat.ui.strings`): every string in both, the
language a request gets, handlers run in it, and the page served in it. No browser, no model."""

from __future__ import annotations

import string

import gradio as gr
import pytest

from mmchat.ui import i18n
from mmchat.ui.strings import STRINGS


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_string_has_both_languages_with_the_same_fields():
    for key, (english, chinese) in STRINGS.items():
        assert english.strip() and chinese.strip(), key
        assert fields(english) == fields(chinese), key
    assert all(not ("a" <= ch.lower() <= "z") for ch in STRINGS["tab.finetune"][1])  # not left in English


@pytest.mark.parametrize("query,cookie,header,expected", [
    (None, None, None, "en"),
    (None, None, "fr-FR,fr;q=0.9", "en"),
    (None, None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
    (None, None, "en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    (None, None, "fr;q=0.9,zh-Hans;q=0.8,en;q=0.5", "zh-CN"),
    (None, "zh-CN", "en-US", "zh-CN"),  # the switch's cookie beats the browser
    ("en", "zh-CN", "zh-CN", "en"),  # and a ?lang= link beats the cookie
    ("xx", "bogus", "zh-TW", "zh-CN"),
])
def test_the_language_is_the_switch_then_the_browser_then_english(query, cookie, header, expected):
    assert i18n.choose(query, cookie, header) == expected


class FakeRequest:
    def __init__(self, accept_language: str = "", cookie: str | None = None) -> None:
        self.headers = {"accept-language": accept_language}
        self.cookies = {i18n.COOKIE: cookie} if cookie else {}


def test_handlers_run_in_their_request_language_and_gradio_hands_them_the_request():
    from gradio.helpers import special_args

    def answer(text: str, request: gr.Request) -> tuple[str, str]:
        return i18n.t("status.ready"), text

    def stream(n: int):
        for _ in range(n):
            yield i18n.t("status.ready")

    wrapped, streamed = i18n.localized(answer), i18n.localized(stream)
    request = FakeRequest("zh-CN,zh;q=0.9")
    # gradio puts the request into both parameters annotated with it
    inputs, *_ = special_args(wrapped, ["hi"], request=request)
    assert inputs == [request, "hi", request]
    assert wrapped(*inputs) == ("就绪", "hi")
    assert i18n.current() == "en"  # nothing leaks out of the handler
    steps = streamed(FakeRequest(cookie="zh-CN"), 2)
    assert next(steps) == "就绪" and i18n.t("status.ready") == "ready" and next(steps) == "就绪"
    assert streamed(FakeRequest("en"), 1).__next__() == "ready"


def test_an_unknown_key_fails_when_the_app_is_built():
    with pytest.raises(KeyError):
        i18n.ui("no.such.key")
    assert i18n.ui("tab.chat").key == "tab.chat"
    formatted = i18n.ui("chat.top_k_info", n=3)
    tables = i18n.gradio_i18n().translations_dict
    assert "3" in tables["en"][formatted.key] and "3 个" in tables["zh-CN"][formatted.key]


def test_the_page_is_served_in_the_chosen_language_and_a_link_sets_the_cookie():
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    page = Starlette(routes=[
        Route("/", lambda request: HTMLResponse("<html><head><title>t</title></head><body></body></html>")),
        Route("/gradio_api/info", lambda request: JSONResponse({"ok": True})),
    ])
    page.add_middleware(i18n.PageLanguage)
    client = TestClient(page)
    chinese = client.get("/", headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert "'zh-CN'" in chinese.text and chinese.text.index("navigator") < chinese.text.index("</head>")
    assert int(chinese.headers["content-length"]) == len(chinese.content)
    assert "set-cookie" not in chinese.headers
    switched = client.get("/?lang=en", headers={"accept-language": "zh-CN"})
    assert "'en'" in switched.text and f"{i18n.COOKIE}=en" in switched.headers["set-cookie"]
    assert "'en'" in client.get("/", headers={"accept-language": "zh-CN"}).text  # the cookie sticks
    assert client.get("/gradio_api/info").json() == {"ok": True}
