"""Outside testing's server-side holes, replayed against the real Gradio server.

The app runs in this process on a free loopback port (tiny random LLaVA, stand-in encoder,
MiniLM, embedded Chroma holding one real photo) and is driven over HTTP with `gradio_client`
and `httpx`, with the crafted inputs the testers used: an import whose retrieval trace points
at files outside the app, uploaded HTML/SVG, a poisoned import, guessable exports, a foreign
Host header, a forged Origin (a page of another site calling the app), a 60 MB upload and
odd file names. Nothing is mocked; one test swaps a render
function to make the UI fail mid-answer.
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are terse."
TRUSTED = "https://*.trusted.example"  # the module's app lists it in [server] allowed_origins

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_backend, standin_encoder, text_embedder, cat_image):
    """The app with a knowledge base holding cat.png; yields (url, config, runtime, data_dir, demo)."""
    from mmchat.config import KnowledgeConfig, load_config
    from mmchat.knowledge.base import KnowledgeBase
    from mmchat.runtime import Runtime
    from mmchat.ui.app import build_app, launch_kwargs

    data_dir = tmp_path_factory.mktemp("security-app")
    kb_path = data_dir / "kb"
    kb = KnowledgeBase(KnowledgeConfig(path=str(kb_path), seed_demo=False), encoder=standin_encoder,
                       text_embedder=text_embedder)
    cat = data_dir / "cat.png"
    cat_image.save(cat)
    assert kb.ingest([cat]).added
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(env={}, overrides={
        "server": {"port": port, "allowed_origins": [TRUSTED]}, "model": {"preset": "tiny"},
        "knowledge": {"path": str(kb_path), "seed_demo": False},
        "generation": {"max_new_tokens": 8, "temperature": 0.0}, "": {"data_dir": str(data_dir)},
    })
    runtime = Runtime(config, backend=tiny_backend, encoder=standin_encoder, knowledge=kb)
    demo = build_app(config, runtime)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(config, runtime))
    yield f"http://127.0.0.1:{port}/", config, runtime, data_dir, demo
    demo.close()


def chat(client, text, files=()):
    job = client.submit({"text": text, "files": [handle_file(str(f)) for f in files]}, SYSTEM, 8, 0.0, 0.9,
                        False, api_name="/chat")
    job.result(timeout=120)
    return job.outputs()[-1]


def texts(chatbot) -> list[str]:
    return [item.get("text", "") for m in chatbot for item in m["content"] if item.get("type") == "text"]


def make_zip(path: Path, payload: dict) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("chat.json", json.dumps(payload))
    return path


# ----- 1. a crafted export cannot make the server hand out files outside its directories ----
@pytest.fixture
def outside_files(app):
    """Files the app must never serve: one in the temp folder (made after launch), the
    project's pyproject.toml, the venv's pyvenv.cfg, an app log beside the data directory."""
    data_dir = app[3]
    marker = secrets.token_hex(8)
    tmp_secret = Path(tempfile.mkdtemp()) / "secret.txt"
    tmp_secret.write_text(f"TMP-SECRET-{marker}")
    log = data_dir / "mmchat.log"
    log.write_text(f"LOG-SECRET-{marker}")
    files = [tmp_secret, ROOT / "pyproject.toml", Path(sys.prefix) / "pyvenv.cfg", log]
    assert all(f.is_file() for f in files)
    yield files
    tmp_secret.unlink()


def crafted_export(paths: list[str], cat_doc_id: str) -> dict:
    image_hits = [{"id": p, "doc_id": p, "file_name": "photo.png", "text": "x", "kind": "image", "score": 0.9,
                   "image_path": p} for p in paths]
    image_hits.append({"id": cat_doc_id[:24] + "-image", "doc_id": cat_doc_id, "file_name": "cat.png",
                       "text": "cat", "kind": "image", "score": 0.8, "image_path": paths[0]})
    retrieval = {"query": "q", "mode": "hybrid", "used": 1, "timings_ms": {"total": 1.0}, "notes": [],
                 "hits": [{"id": "h1", "doc_id": paths[0], "file_name": "guide.md", "text": "t", "score": 0.5,
                           "image_path": paths[-1]}],
                 "images": image_hits}
    return {"format": "mmchat.chat/1", "system_prompt": SYSTEM, "images": {}, "messages": [
        {"role": "user", "text": "first", "image_ids": []},
        {"role": "assistant", "text": "answer", "image_ids": [], "retrieval": retrieval},
        {"role": "user", "text": "second", "image_ids": []},
    ]}


def test_crafted_import_never_serves_files_outside_the_app(app, outside_files, tmp_path):
    url, config, runtime, _, demo = app
    kb = runtime.knowledge
    cat_record = next(r for r in kb.documents() if r.kind == "image")
    cat_bytes = (kb.files_dir / cat_record.stored).read_bytes()
    secrets_ = {f.read_bytes() for f in outside_files}
    paths = [str(f) for f in outside_files] + ["../pyproject.toml", "../../../../../etc/passwd", "pyproject.toml"]

    client = Client(url, verbose=False)
    chatbot, _ = client.predict(handle_file(str(make_zip(tmp_path / "crafted.zip", crafted_export(paths, cat_record.doc_id)))),
                                api_name="/import_chat")[:2]
    assert "second" in texts(chatbot)
    # Undo shows the sources panel of the imported answer: the gallery renders its images.
    gallery = client.predict(api_name="/undo")[-1]  # (state outputs are not sent to clients)
    captions = [item["caption"] for item in gallery]
    assert sum("missing from the knowledge base" in c for c in captions) == len(paths), captions
    served = [Path(item["image"]).read_bytes() for item in gallery]  # the client downloaded each
    assert not secrets_ & set(served), "a file from outside the app came back through the gallery"
    assert served.count(cat_bytes) == 1, "the real image is found by its id in the knowledge base"

    # Nor by URL: gradio's file route refuses every one of them.
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in paths:
            response = http.get(f"gradio_api/file={path}")
            assert response.status_code in (403, 404), (path, response.status_code)
            assert response.content not in secrets_

    # And gradio's check before it copies an output into its cache (which alone would accept the
    # working directory and the temp folder) refuses them for this app.
    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError

    late = Path(tempfile.gettempdir()) / f"late-{secrets.token_hex(4)}.txt"  # made after launch
    late.write_text("late")
    token = LocalContext.blocks.set(demo)
    try:
        for path in [*outside_files, late, ROOT / "README.md"]:
            with pytest.raises(InvalidPathError, match="only from its own directories"):
                processing_utils._check_allowed(path, False)
        processing_utils._check_allowed(kb.files_dir / cat_record.stored, False)
        processing_utils._check_allowed(ROOT / "knowledge" / "images" / "cat.png", False)
    finally:
        LocalContext.blocks.reset(token)
        late.unlink()


def test_import_keeps_only_ids_scores_and_text_of_a_trace(app, tmp_path):
    url, _, runtime, *_ = app
    session = runtime.new_session()
    session.import_chat(make_zip(tmp_path / "c.zip", crafted_export(["/etc/passwd"], "0" * 64)))
    trace = session.history[1].retrieval
    assert all("image_path" not in h for h in trace["hits"] + trace["images"])
    assert trace["images"][0]["doc_id"] == "/etc/passwd"  # kept as text, resolved only by the knowledge base
    assert runtime.knowledge.image_file("/etc/passwd") is None and runtime.knowledge.image_file("0" * 64) is None


# ----- 2. uploaded active content is never served as a page of the app ---------------------
def test_uploaded_html_and_svg_come_back_as_inert_downloads(app, cat_image):
    url, _, runtime, *_ = app
    png = io.BytesIO()
    cat_image.save(png, format="PNG")
    script = b"<script>fetch('/config').then(r => r.text()).then(alert)</script>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/config")</script></svg>'
    with httpx.Client(base_url=url, timeout=30) as http:
        uploaded = http.post("gradio_api/upload", files=[
            ("files", ("evil.html", script, "text/html")),
            ("files", ("evil.svg", svg, "image/svg+xml")),
            ("files", ("cat.png", png.getvalue(), "image/png")),
        ])
        assert uploaded.status_code == 200, uploaded.text
        html_path, svg_path, png_path = uploaded.json()
        # A kept copy of an HTML knowledge document lies in a served directory.
        kept = runtime.knowledge.files_dir / f"{secrets.token_hex(32)}.html"
        kept.write_bytes(script)
        try:
            for path in (html_path, svg_path, str(kept)):
                response = http.get(f"gradio_api/file={path}")
                assert response.status_code == 200, path
                assert response.headers["content-disposition"].startswith("attachment"), path
                assert response.headers["content-type"] == "application/octet-stream"
                assert response.headers["x-content-type-options"] == "nosniff"
                assert response.headers["content-security-policy"] == "sandbox"
        finally:
            kept.unlink()
        image = http.get(f"gradio_api/file={png_path}")
        assert image.headers["content-type"] == "image/png" and image.content == png.getvalue()
        assert not image.headers.get("content-disposition", "inline").startswith("attachment")
        assert image.headers["content-security-policy"] == "sandbox"
        page = http.get("/")
        assert page.status_code == 200 and "content-security-policy" not in page.headers  # the app itself runs


# ----- 3. a poisoned import is refused whole, and the busy lock never leaks ------------------
def test_poisoned_import_is_refused_and_the_chat_goes_on(app, tmp_path):
    url, *_ = app
    client = Client(url, verbose=False)
    before = chat(client, "first question")[0]
    exported = client.predict(api_name="/export")["value"]
    with zipfile.ZipFile(exported) as archive:
        payload = json.loads(archive.read("chat.json"))
    payload["messages"] = [{"role": "user", "text": "imported"}, {"role": "assistant", "text": "x",
                           "stats": {"time_to_first_token_s": "soon", "output_tokens": 3}}]
    with pytest.raises(AppError, match=r"time_to_first_token_s is 'soon'"):
        client.predict(handle_file(str(make_zip(tmp_path / "poisoned.zip", payload))), api_name="/import_chat")
    after = chat(client, "second question")[0]
    assert texts(after)[: len(texts(before))] == texts(before), "the history was not replaced"
    assert "imported" not in texts(after) and "second question" in texts(after)
    assert "tok/s" in texts(after)[-1], "the next message is answered"
    assert "tok/s" in texts(chat(client, "third question")[0])[-1]


def test_a_render_failure_mid_answer_does_not_leave_the_session_busy(app, monkeypatch):
    import mmchat.ui.chat as chat_ui

    url, *_ = app
    client = Client(url, verbose=False)
    chat(client, "warm up")
    real = chat_ui.chatbot_messages

    def broken(session):
        if any(m.text == "break the UI" for m in session.history):
            raise RuntimeError("render failed")
        return real(session)

    monkeypatch.setattr(chat_ui, "chatbot_messages", broken)
    gc.disable()  # the lock must be released by the handler, not by a garbage collection
    try:
        with pytest.raises(AppError):
            chat(client, "break the UI")
        monkeypatch.setattr(chat_ui, "chatbot_messages", real)
        assert not client.predict(api_name="/clear")[0], "clear is not refused as 'while streaming'"
        final = chat(client, "works again")[0]
    finally:
        gc.enable()
    assert texts(final)[0] == "works again" and "tok/s" in texts(final)[-1]


# ----- 4. exports: unguessable, per session, purged ------------------------------------------
def test_exports_are_per_session_unguessable_and_removed(app):
    from gradio.processing_utils import hash_file
    from gradio.utils import get_upload_folder

    url, _, runtime, *_ = app
    stale = runtime.export_dir / "stale-session" / "mmchat-chat-old.zip"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"old")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    earlier = {p for p in runtime.export_dir.iterdir() if p.is_dir()}  # other tests' sessions
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    for client in (alice, bob):
        chat(client, "something to export")
    alice_download = alice.predict(api_name="/export")["value"]
    bob.predict(api_name="/export")
    assert not stale.exists() and not stale.parent.exists(), "exports older than an hour are purged on export"
    folders = sorted(p for p in runtime.export_dir.iterdir() if p.is_dir() and p not in earlier)
    assert len(folders) == 2, folders  # one folder per browser session
    for folder in folders:
        assert len(folder.name) == 40 and all(c in "0123456789abcdef" for c in folder.name)
        (export,) = folder.glob("*.zip")
        assert re.fullmatch(r"mmchat-chat-\d{8}-\d{6}-[\w-]{16}\.zip", export.name), export.name  # a random token
    alice_folder = next(f for f in folders if next(f.glob("*.zip")).read_bytes() == Path(alice_download).read_bytes())
    alice_export = next(alice_folder.glob("*.zip"))
    cached = Path(get_upload_folder()) / hash_file(alice_export)
    assert cached.is_dir()  # gradio's copy, the one the download link named
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get(f"gradio_api/file={runtime.export_dir}").status_code == 403  # no listing

    alice.close()  # the browser session ends: gradio runs the app's unload hook
    deadline = time.time() + 20
    while alice_folder.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not alice_folder.exists() and not cached.exists()
    assert [f for f in folders if f != alice_folder][0].is_dir(), "another session's export stays"


# ----- 5. DNS rebinding: only the configured host names -------------------------------------
def test_foreign_host_header_is_refused(app):
    url, config, *_ = app
    port = config.server.port
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/").status_code == 200
        assert http.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200
        for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.evil.example:{port}"):
            refused = http.get("gradio_api/info", headers={"Host": host})
            assert refused.status_code == 400 and "Invalid Host header" in refused.text, host
        assert http.post("gradio_api/upload", headers={"Host": "evil.example"},
                         files=[("files", ("a.txt", b"x", "text/plain"))]).status_code == 400


def test_allowed_hosts_for_spaces_and_lan(monkeypatch):
    from mmchat.config import load_config
    from mmchat.ui.security import allowed_host_names, host_allowed

    config = load_config(env={"MMCHAT_ALLOWED_HOSTS": "*.hf.space, box.lan", "GRADIO_SERVER_NAME": "0.0.0.0"})
    names = allowed_host_names(config.server.host, config.server.allowed_hosts)
    for ok in ("me-mmchat.hf.space", "me-mmchat.hf.space:7860", "box.lan", "localhost:7860", "[::1]:7860"):
        assert host_allowed(ok, names, any_ip=True), ok
    assert host_allowed("192.168.1.20:7860", names, any_ip=True)  # bound to all interfaces: its IPs work
    for bad in ("hf.space.evil.com", "evil.com", ""):
        assert not host_allowed(bad, names, any_ip=True), bad
    assert not host_allowed("192.168.1.20", allowed_host_names("127.0.0.1", ()))
    # The Spaces entry names the Space's host before the config is read.
    source = (ROOT / "spaces" / "app.py").read_text()
    assert 'setdefault("MMCHAT_ALLOWED_HOSTS", os.environ.get("SPACE_HOST") or "*.hf.space")' in source


# ----- 5b. cross-origin: a page of another site cannot upload or queue jobs ----------------
def _upload(http, headers):
    return http.post("gradio_api/upload", headers=headers, files=[("files", ("a.txt", b"x", "text/plain"))])


def _join(http, headers, fn_index):
    return http.post("gradio_api/queue/join", headers=headers,
                     json={"data": [], "fn_index": fn_index, "session_hash": "origin-test", "event_data": None})


def test_a_foreign_origin_is_refused_and_the_own_listed_or_no_origin_works(app):
    url, config, _, _, demo = app
    port = config.server.port
    status = next(i for i, fn in demo.fns.items() if fn.api_name == "status")  # no inputs: harmless to queue
    foreign = {"Origin": "https://evil.example"}
    with httpx.Client(base_url=url, timeout=30) as http:
        for response in (_upload(http, foreign), _join(http, foreign, status),
                         http.get("gradio_api/queue/data?session_hash=origin-test", headers=foreign),  # SSE
                         http.get("config", headers=foreign)):
            assert response.status_code == 403, (response.request.url, response.status_code, response.text)
            assert "'https://evil.example'" in response.text and "allowed_origins" in response.text, response.text
            assert "MMCHAT_ALLOWED_ORIGINS" in response.text
        for origin in ("null", f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}",  # another port / host
                       "https://trusted.example.evil.test", f"http://127.0.0.1:{port}/x"):
            assert _upload(http, {"Origin": origin}).status_code == 403, origin
        # No Origin, but the browser says another site sent it.
        cross = _upload(http, {"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403 and "Sec-Fetch-Site: cross-site" in cross.text
        assert http.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to the app

        for headers in ({}, {"Origin": f"http://127.0.0.1:{port}"}, {"Origin": "https://spaces.trusted.example"},
                        {"Sec-Fetch-Site": "same-origin"}):
            uploaded = _upload(http, headers)
            assert uploaded.status_code == 200 and uploaded.json()[0].endswith("a.txt"), (headers, uploaded.text)
            joined = _join(http, headers, status)
            assert joined.status_code == 200 and "event_id" in joined.json(), (headers, joined.text)
        localhost = http.post("gradio_api/upload", headers={"Host": f"localhost:{port}",
                                                            "Origin": f"http://localhost:{port}"},
                              files=[("files", ("a.txt", b"x", "text/plain"))])
        assert localhost.status_code == 200  # the page's own origin, whichever name it was opened under

    # A whole client session (config, queue/join, the SSE stream) from the app's own page works,
    # and from a foreign one nothing does.
    own = Client(url, verbose=False, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert own.predict(api_name="/clear")[0] == []
    with pytest.raises(Exception):
        Client(url, verbose=False, headers={"Origin": "https://evil.example"})


def _scope(kind: str, headers: dict, method: str = "POST") -> dict:
    return {"type": kind, "scheme": "ws" if kind == "websocket" else "http", "method": method, "path": "/x",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def test_origin_guard_checks_websockets_and_the_all_interfaces_rules():
    import asyncio

    from mmchat.ui.security import OriginGuard, allowed_host_names, origin_patterns

    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["type"])

    def call(guard, scope):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "websocket.connect"}

        asyncio.run(guard(scope, receive, send))
        return sent

    hosts = allowed_host_names("0.0.0.0", ["box.lan"])
    guard = OriginGuard(inner, hosts=hosts, any_ip=True, patterns=origin_patterns(["http://localhost:3000"]))
    sent = call(guard, _scope("websocket", {"Host": "box.lan:7860", "Origin": "https://evil.example"}))
    assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008 and not reached
    assert call(guard, _scope("websocket", {"Host": "box.lan:7860", "Origin": "http://box.lan:7860"})) == []
    assert reached == ["websocket"]
    # Bound to all interfaces: a configured name is the app's own on any port (a proxy in front);
    # loopback on another port is another local server's page, an unnamed IP is not a name.
    refusal = guard.refusal
    assert refusal(_scope("http", {"Host": "192.168.1.5:7860", "Origin": "https://box.lan:8443"})) is None
    assert refusal(_scope("http", {"Host": "192.168.1.5:7860", "Origin": "http://192.168.1.5:7860"})) is None
    assert refusal(_scope("http", {"Host": "192.168.1.5:7860", "Origin": "http://localhost:3000"})) is None  # listed
    for origin in ("http://localhost:8000", "http://192.168.1.9:7860", "http://box.lan.evil.example"):
        assert refusal(_scope("http", {"Host": "192.168.1.5:7860", "Origin": origin})) is not None, origin
    # Behind a TLS proxy (Spaces, share links) the page is https, this server sees http, no port.
    local = OriginGuard(inner, hosts=allowed_host_names("127.0.0.1", ["me-app.hf.space"]))
    assert local.refusal(_scope("http", {"Host": "me-app.hf.space", "Origin": "https://me-app.hf.space"})) is None
    assert local.refusal(_scope("http", {"Host": "me-app.hf.space", "Origin": "https://other.hf.space"}))


def test_allowed_origins_patterns_and_the_spaces_defaults():
    from mmchat.config import load_config
    from mmchat.errors import ConfigError
    from mmchat.ui.security import origin_patterns, parse_origin

    def allowed(patterns, origin):
        return any(p.matches(parse_origin(origin)) for p in origin_patterns(patterns))

    assert allowed(["https://*.hf.space"], "https://me-app.hf.space")
    assert not allowed(["https://*.hf.space"], "http://me-app.hf.space")  # the scheme counts
    assert not allowed(["https://*.hf.space"], "https://me-app.hf.space:8443")  # so does the port
    assert not allowed(["https://*.hf.space"], "https://hf.space.evil.example")
    assert allowed(["*.hf.space"], "http://me-app.hf.space") and allowed(["http://localhost:*"], "http://localhost:5")
    assert allowed(["http://[::1]:3000"], "http://[::1]:3000") and allowed(["*"], "https://anything.example")
    for bad in ("ftp://x.example", "https://", "x.example:99999", "https://a b.example", "https://x.example/path"):
        with pytest.raises(ConfigError, match=re.escape(repr(bad))):
            origin_patterns([bad])
    config = load_config(env={"MMCHAT_ALLOWED_ORIGINS": "https://*.hf.space, https://huggingface.co"})
    assert config.server.allowed_origins == ("https://*.hf.space", "https://huggingface.co")
    # The Spaces entry allows the Space's own page and huggingface.co, which embeds it.
    source = (ROOT / "spaces" / "app.py").read_text()
    assert 'os.environ.setdefault("MMCHAT_ALLOWED_ORIGINS", f"{_space_origin},https://huggingface.co")' in source
    assert '_space_origin = f"https://{os.environ[\'SPACE_HOST\']}" if os.environ.get("SPACE_HOST") else ' \
           '"https://*.hf.space"' in source


# ----- 6. upload messages: the size limit names the file; odd names are accepted ------------
def test_oversized_upload_message_names_the_file_and_the_limit(app):
    url, config, *_ = app
    limit_mb = config.knowledge.max_file_mb
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("gradio_api/upload", files=[
            ("files", ("holiday photo.png", b"\0" * (60 * 1024 * 1024), "image/png"))])
    assert response.status_code == 413
    assert "holiday photo.png" in response.text and f"limited to {limit_mb} MB" in response.text, response.text
    assert "60.0 MB" in response.text


@pytest.mark.parametrize("name", ["IMG_0412", "cat.png.download", "CAT.PNG", '猫 "quoted".png', "my cat's photo.jpg"])
def test_odd_image_names_are_accepted(app, tmp_path, cat_image, name):
    url, *_ = app
    path = tmp_path / name
    cat_image.save(path, format="JPEG" if name.endswith(".jpg") else "PNG")
    final = chat(Client(url, verbose=False), "what is it?", [path])
    assert final[0] and final[0][0]["role"] == "user", "the image was refused"
    assert any(item["type"] == "file" for item in final[0][0]["content"])


def test_a_non_image_without_extension_is_refused_by_content(app, tmp_path):
    url, *_ = app
    notes = tmp_path / "notes"
    notes.write_text("just some text, not a picture")
    job = Client(url, verbose=False).submit({"text": "look", "files": [handle_file(str(notes))]}, SYSTEM, 8, 0.0, 0.9,
                                            False, api_name="/chat")
    job.result(timeout=60)
    final = job.outputs()[-1]
    assert final[0] == [] and final[1]["value"]["text"] == "look"
