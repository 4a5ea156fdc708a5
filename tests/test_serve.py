"""The README's run path as a newcomer meets it: `python app.py` in a subprocess with default
settings (auto preset -> offline stand-in on CPU, auto encoder -> stand-in, knowledge base on
with the demo corpus indexed at first start, the shipped adapters loaded), then a real client
uploads the cat photo and asks (with the base, then with two shipped adapters), and asks a
question the demo PDF answers. The app is then restarted: the knowledge base is still there
and is not indexed again. Only the port and the data folders are chosen here.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def start_app(tmp_path, env_extra):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "MMCHAT_DATA_DIR": str(tmp_path / "data"), **env_extra}
    env.pop("MMCHAT_PRESET", None)
    log_path = tmp_path / f"server-{port}.log"
    log = log_path.open("w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    client = None
    deadline = time.time() + 180
    while client is None and time.time() < deadline:
        assert server.poll() is None, log_path.read_text()
        try:
            client = Client(url, verbose=False)
        except Exception:
            time.sleep(0.5)
    assert client is not None, "server did not come up"
    return server, log, log_path, port, client


def stop_app(server, log):
    server.terminate()
    server.wait(timeout=30)
    log.close()


SYSTEM = "You are a helpful assistant. Answer briefly and accurately."


def fresh_answer(port: int, photo: Path, adapter: str) -> str:
    """A new client asks about the photo, knowledge off, with that adapter: the answer's text."""
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    result = client.predict({"text": "What animal is this?", "files": [handle_file(str(photo))]},
                            SYSTEM, 48, 0.0, 0.9, False, 4, [], False, False, adapter, api_name="/chat")
    return result[0][-1]["content"][0]["text"]


def test_app_py_serves_on_loopback_answers_with_sources_and_keeps_its_knowledge(tmp_path, cat_image):
    cat_path = tmp_path / "cat.jpg"
    cat_image.save(cat_path)
    knowledge_env = {"MMCHAT_KNOWLEDGE_PATH": str(tmp_path / "knowledge")}
    server, log, log_path, port, client = start_app(tmp_path, knowledge_env)
    try:
        # /status streams until the models are loaded and the demo corpus is indexed.
        status = client.predict(api_name="/status")
        assert "`offline`" in status and "Offline stand-in" in status, status
        assert "**Knowledge** 8 documents" in status, status  # knowledge/demo and knowledge/images
        # An image question, with the knowledge base switched off for this conversation.
        job = client.submit({"text": "What animal is this?", "files": [handle_file(str(cat_path))]},
                            SYSTEM, 48, 0.0, 0.9, False, api_name="/chat")
        job.result(timeout=180)
        answer = job.outputs()[-1][0][-1]["content"][0]["text"]
        assert "cat" in answer.lower(), answer
        # The shipped adapters are loaded and answer in their own styles, per message.
        assert "**Adapters** 4 adapters: `caption`, `json`, `one-word`, `shapes`" in status, status
        for adapter, style in (("one-word", r"cat"), ("json", r'\{"answer": "cat", "confidence": [0-9.]+\}')):
            answer = fresh_answer(port, cat_path, adapter)
            assert re.fullmatch(style, answer.split("\n")[0].strip()), (adapter, answer)
        # A question the demo PDF answers on page 2 (stage 1's data) and page 3 (the 558K images
        # for pre-training): the answer carries numbered sources.
        fresh = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = fresh.submit({"text": "What data did LLaVA use to pre-train its projector?", "files": []},
                           SYSTEM, 32, 0.0, 0.9, True, 4, api_name="/chat")
        job.result(timeout=180)
        final = job.outputs()[-1]
        answer = final[0][-1]["content"][0]["text"]
        assert "Sources: [1]" in answer and re.search(r"llava-overview\.pdf, p\. [23]", answer), answer
        assert re.search(r"\| \[1\] \| llava-overview\.pdf, p\. [23]", final[3]), final[3]  # sources panel
        # the default bind is loopback only
        assert f"127.0.0.1:{port}" in log_path.read_text()
        # a DNS-rebinding Host is refused; nothing of the project, the venv or the log is served
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=30) as http:
            assert http.get("/", headers={"Host": f"rebind.example:{port}"}).status_code == 400
            for outside in (ROOT / "pyproject.toml", Path(sys.prefix) / "pyvenv.cfg", log_path):
                assert http.get(f"gradio_api/file={outside}").status_code == 403, outside
    finally:
        stop_app(server, log)
    # Restart: the knowledge base is still there and the demo corpus is not indexed again.
    server, log, log_path, port, client = start_app(tmp_path, knowledge_env)
    try:
        status = client.predict(api_name="/status")
        assert "**Knowledge** 8 documents" in status, status  # knowledge/demo and knowledge/images
        assert "Indexed" not in log_path.read_text()
        rows = client.predict(api_name="/knowledge_documents")[0]["data"]
        assert sorted(r[0] for r in rows)[:2] == ["astronaut.png", "cat.png"]
    finally:
        stop_app(server, log)
