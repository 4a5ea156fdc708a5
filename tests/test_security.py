"""Outside testing's server-side holes, replayed against the real Gradio server.

The app runs in this process on a free loopback port (tiny random LLaVA, stand-in encoder,
MiniLM, embedded Chroma holding one real photo) and is driven over HTTP with `gradio_client`
and `httpx`, with the crafted inputs the testers used: an import whose retrieval trace points
at files outside the app, uploaded HTML/SVG, a poisoned import, guessable exports, a foreign
Host header, a 60 MB upload and odd file names. Nothing is mocked; one test swaps a render
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
        "server": {"port": port}, "model": {"preset": "tiny"},
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
