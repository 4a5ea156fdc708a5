"""The README's run path as a newcomer meets it: `python app.py` in a subprocess with default
settings (auto preset -> offline stand-in on CPU, auto encoder -> stand-in), then a real
client uploads the cat photo and asks. Only the port and the data directory are chosen here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_app_py_serves_on_loopback_and_answers_about_a_cat(tmp_path, cat_image):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cat_path = tmp_path / "cat.jpg"
    cat_image.save(cat_path)
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "MMCHAT_DATA_DIR": str(tmp_path / "data")}
    env.pop("MMCHAT_PRESET", None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = None
        deadline = time.time() + 180
        while client is None and time.time() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                client = Client(url, verbose=False)
            except Exception:
                time.sleep(0.5)
        assert client is not None, "server did not come up"
        status = client.predict(api_name="/status")  # streams until loaded; returns the final line
        assert "`offline`" in status and "Offline stand-in" in status, status
        job = client.submit({"text": "What animal is this?", "files": [handle_file(str(cat_path))]},
                            "You are a helpful assistant. Answer briefly and accurately.", 48, 0.0, 0.9,
                            api_name="/chat")
        job.result(timeout=180)
        answer = job.outputs()[-1][0][-1]["content"][0]["text"]
        assert "cat" in answer.lower(), answer
        # the default bind is loopback only
        out = (tmp_path / "server.log").read_text()
        assert f"127.0.0.1:{port}" in out
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
