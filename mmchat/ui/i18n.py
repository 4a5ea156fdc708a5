"""The UI's words in English and Simplified Chinese, and which of the two a visitor gets.

- `STRINGS` (in `mmchat.ui.strings`): every string the UI shows, by key, as (English, 中文).
- `ui(key, **values)`: a string for a component's config (label, button, placeholder, info,
  static Markdown), as gradio's `I18nData`: gradio's page translates it in the browser.
- `t(key, **values)`: a string an event handler produces (status lines, tables, toasts),
  translated on the server into the language of the request being handled.
- The language: a `?lang=en|zh-CN` link sets the `mmchat-lang` cookie (the header's switch);
  without it, the browser's `Accept-Language`; English when neither names Chinese.
  `localize_events(demo)` makes every event handler run in its request's language, and
  `PageLanguage` (ASGI) sets the cookie and makes gradio's page use the same language for
  its own strings and `ui(...)` ones, so page and server never disagree.

It does not translate messages made outside the UI (the session's, the knowledge base's, the
trainer's): `mmchat.ui.messages.localize` does, where they are shown.
"""

from __future__ import annotations

import contextvars
import inspect
import re
from typing import Any, Callable
from urllib.parse import parse_qs

from mmchat.ui.strings import STRINGS

DEFAULT = "en"
COOKIE = "mmchat-lang"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("mmchat_language", default=DEFAULT)
# Keys of strings formatted for a component's config (`ui(key, n=2)`): gradio's page can only
# look up whole strings, so each formatted variant gets its own entry.
_formatted: dict[str, tuple[str, str]] = {}


def normalize(tag: str | None) -> str | None:
    """A language tag as "en" or "zh-CN" (zh, zh-Hans, zh-TW... -> zh-CN; en-GB -> en); None for others."""
    tag = (tag or "").strip().lower()
    if tag.startswith("zh"):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def from_accept_language(header: str | None) -> str | None:
    """The first supported language of an `Accept-Language` header, by quality (None if none)."""
    ranked = []
    for position, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        match = re.search(r"q=([0-9.]+)", params)
        quality = float(match.group(1)) if match else 1.0
        ranked.append((-quality, position, tag))
    for quality, _, tag in sorted(ranked):
        if quality < 0 and normalize(tag):
            return normalize(tag)
    return None


def choose(query_lang: str | None = None, cookie: str | None = None, accept_language: str | None = None) -> str:
    """The language: the switch's choice (link, then cookie), else the browser's, else English."""
    return normalize(query_lang) or normalize(cookie) or from_accept_language(accept_language) or DEFAULT


def request_language(request: Any) -> str:
    """The language of a gradio request (cookie, then Accept-Language); English without one."""
    if request is None:
        return DEFAULT
    cookies = getattr(request, "cookies", None) or {}
    headers = getattr(request, "headers", None) or {}
    return choose(cookie=cookies.get(COOKIE), accept_language=headers.get("accept-language"))


def scope_language(scope: dict, query_lang: str | None = None) -> str:
    """The language of an ASGI request (for middleware, which has no gradio request)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
    return choose(query_lang, cookies.get(COOKIE), headers.get("accept-language"))


def current() -> str:
    return _current.get()


def t(key: str, /, **values: Any) -> str:
    """The string `key` in the language of the request being handled, formatted with `values`."""
    return t_in(current(), key, **values)


def t_in(language: str, key: str, /, **values: Any) -> str:
    """The string `key` in `language`, formatted with `values`."""
    english, chinese = STRINGS[key]
    text = chinese if language == "zh-CN" else english
    return text.format(**values) if values else text


def term(kind: str, value: Any) -> str:
    """A known term (`kind.value`, e.g. a finish reason) translated; an unknown one as it is."""
    key = f"{kind}.{value}"
    return t(key) if key in STRINGS else str(value)


def ui(key: str, /, **values: Any) -> Any:
    """The string `key` for a component's config: translated by gradio's page in the browser."""
    from gradio.i18n import I18nData

    if values:
        english, chinese = STRINGS[key]
        variant = f"{key}?" + "&".join(f"{k}={v}" for k, v in sorted(values.items()))
        _formatted[variant] = (english.format(**values), chinese.format(**values))
        key = variant
    else:
        STRINGS[key]  # an unknown key fails here, at build time, not as a raw key on the page
    return I18nData(key)


def gradio_i18n() -> Any:
    """The tables for `Blocks.launch(i18n=...)`."""
    import gradio as gr

    pairs = {**STRINGS, **_formatted}
    return gr.I18n(en={k: v[0] for k, v in pairs.items()}, **{"zh-CN": {k: v[1] for k, v in pairs.items()}})


# ----- every event in its request's language ------------------------------------------------

def localized(fn: Callable) -> Callable:
    """`fn` as an event handler that runs in the language of its request.

    Gradio hands a `gr.Request` to a positional parameter annotated with it, so the wrapper
    takes one first and passes the rest on. Handlers may be generators: gradio runs each step
    in a fresh copy of the context, so the language is set again for every step.
    """
    import gradio as gr
    from gradio.utils import get_type_hints

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return fn  # none in this app; left as they are rather than half-handled
    if inspect.isgeneratorfunction(fn):
        def wrapper(_mmchat_request: gr.Request, *args: Any, **kwargs: Any) -> Any:
            language = request_language(_mmchat_request)
            inner = fn(*args, **kwargs)
            try:
                while True:
                    token = _current.set(language)
                    try:
                        item = next(inner)
                    except StopIteration:
                        return
                    finally:
                        _current.reset(token)
                    yield item
            finally:  # closed early (the browser left): the handler's own clean-up runs
                inner.close()
    else:
        def wrapper(_mmchat_request: gr.Request, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            token = _current.set(request_language(_mmchat_request))
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

    request_param = inspect.Parameter("_mmchat_request", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.signature(fn)
    wrapper.__signature__ = signature.replace(parameters=[request_param, *signature.parameters.values()])
    # Resolved here: the wrapper's module cannot resolve the handler's string annotations.
    wrapper.__annotations__ = {**get_type_hints(fn), "_mmchat_request": gr.Request}
    wrapper.__name__ = getattr(fn, "__name__", "fn")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def localize_events(demo: Any) -> None:
    """Make every event handler of `demo` run in its request's language (call once, after building)."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = localized(block_fn.fn)


# ----- the page in the same language ---------------------------------------------------------

def _page_script(language: str) -> bytes:
    # Gradio's page picks its language from navigator.language when it starts; this runs first.
    return (
        "<script>(() => { const l = '%s';"
        " Object.defineProperty(navigator, 'language', {get: () => l, configurable: true});"
        " Object.defineProperty(navigator, 'languages', {get: () => [l], configurable: true}); })();</script>"
        % language
    ).encode()


class PageLanguage:
    """ASGI middleware: the app's page in the visitor's language; `?lang=` also sets the cookie.

    It changes only HTML pages (gradio's app page): one script before `</head>`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or "/gradio_api/" in scope.get("path", ""):
            await self.app(scope, receive, send)
            return
        query_lang = normalize(parse_qs(scope.get("query_string", b"").decode("latin-1")).get("lang", [""])[0])
        language = scope_language(scope, query_lang)
        start: dict = {}
        body = bytearray()

        async def send_wrapper(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = next((v for k, v in message.get("headers", []) if k.lower() == b"content-type"), b"")
                if not content_type.startswith(b"text/html"):
                    start = {}
                    await send(message)
                    return
                start = message
                return
            if not start:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            page = bytes(body).replace(b"</head>", _page_script(language) + b"</head>", 1)
            out = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            out.append((b"content-length", str(len(page)).encode()))
            if query_lang:
                out.append((b"set-cookie", f"{COOKIE}={query_lang}; Path=/; Max-Age=31536000; SameSite=Lax".encode()))
            await send({**start, "headers": out})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_wrapper)
