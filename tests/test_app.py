"""The real Gradio server driven by `gradio_client`: streaming chat, per-browser state, bad input.

The server runs in this process on a free loopback port with the tiny random LLaVA (its words
are noise) and the real offline stand-in image encoder. Nothing is mocked.
"""

from __future__ import annotations

import time
import zipfile

import pytest
from gradio_client import Client, handle_file


@pytest.fixture(scope="module")
def server(tmp_path_factory, launch_app, tiny_backend, standin_encoder):
    data_dir = tmp_path_factory.mktemp("app-data")
    url = launch_app(data_dir, tiny_backend, standin_encoder, preset="tiny",
                     generation={"max_new_tokens": 24, "temperature": 0.0})
    return url, data_dir


def chat(client, text, files=(), max_new_tokens=24):
    message = {"text": text, "files": [handle_file(str(f)) for f in files]}
    job = client.submit(message, "You are terse.", max_new_tokens, 0.0, 0.9, api_name="/chat")
    job.result(timeout=120)
    return job, job.outputs()


def test_streaming_chat_with_an_image(server, tmp_path, cat_image):
    url, data_dir = server
    cat_path = tmp_path / "my cat.png"
    cat_image.save(cat_path)
    client = Client(url, verbose=False)
    job, outputs = chat(client, "What animal is this?", [cat_path], max_new_tokens=200)
    assert len(outputs) >= 3, "expected several streamed updates"
    final_chat = outputs[-1][0]
    assert final_chat[0]["role"] == "user" and final_chat[-1]["role"] == "assistant"
    texts = texts_of(final_chat[0])
    assert any("cat" in t.lower() for t in texts), "the stand-in's labels are shown with the image"
    assert any("What animal is this?" in t for t in texts)
    assert any(item["type"] == "file" for item in final_chat[0]["content"])
    assert "tok/s" in texts_of(final_chat[-1])[-1]
    # answers grow monotonically while streaming
    lengths = [len(texts_of(o[0][-1])[-1]) for o in outputs if o[0] and o[0][-1]["role"] == "assistant"]
    assert lengths == sorted(lengths)
    # the upload was stored inside the app's own data directory, under its hash
    stored = list((data_dir / "uploads").glob("*.png"))
    assert stored and all(len(p.stem) == 64 for p in stored)
    assert "time to first token" in outputs[-1][2]  # the trace panel (state is not sent to clients)


def texts_of(message: dict) -> list[str]:
    """The text items of a chatbot message, as the client receives them (normalised)."""
    return [item["text"] for item in message["content"] if item.get("type") == "text"]


def test_two_clients_do_not_share_history(server):
    url, _ = server
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    _, a = chat(alice, "alice secret")
    _, b = chat(bob, "bob question")
    bob_texts = str(b[-1][0])
    assert "alice secret" not in bob_texts and "bob question" in bob_texts
    _, a2 = chat(alice, "alice again")
    assert "alice secret" in str(a2[-1][0]) and "bob question" not in str(a2[-1][0])


def test_bad_upload_gets_a_message_and_server_keeps_serving(server, tmp_path):
    url, _ = server
    fake = tmp_path / "report.png"
    fake.write_bytes(b"%PDF-1.4\n" + b"x" * 100)
    client = Client(url, verbose=False)
    job = client.submit({"text": "look", "files": [handle_file(str(fake))]}, "", 8, 0.0, 0.9, api_name="/chat")
    job.result(timeout=60)
    final = job.outputs()[-1]
    assert final[0] == [], "a rejected upload adds nothing to the chat"
    assert final[1]["value"]["text"] == "look", "the message stays in the textbox so nothing is lost"
    _, outputs = chat(client, "still working?")
    assert outputs[-1][0][-1]["role"] == "assistant"


def test_undo_clear_and_status_endpoints(server):
    url, _ = server
    client = Client(url, verbose=False)
    chat(client, "to be undone")
    result = client.predict(api_name="/undo")
    assert result[0] == [] and result[1]["value"]["text"] == "to be undone"
    chat(client, "kept")
    assert client.predict(api_name="/clear")[0] == []
    status = client.predict(api_name="/status")
    assert "tiny" in status and "cpu" in status


def test_stop_endpoint_ends_a_long_answer(server):
    url, _ = server
    client = Client(url, verbose=False)
    job = client.submit({"text": "go on forever", "files": []}, "", 900, 0.0, 0.9, api_name="/chat")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/stop")
    job.result(timeout=60)
    final_answer = texts_of(job.outputs()[-1][0][-1])[-1]
    assert "stopped" in final_answer


def test_export_then_import_restores_the_chat(server, tmp_path, cat_image):
    url, data_dir = server
    cat_path = tmp_path / "cat.png"
    cat_image.save(cat_path)
    client = Client(url, verbose=False)
    chat(client, "remember this picture", [cat_path])
    exported = client.predict(api_name="/export")
    assert exported["visible"] is True  # the download appears in the UI
    path = exported["value"]  # the client downloaded it
    assert path.endswith(".zip") and zipfile.is_zipfile(path)

    other = Client(url, verbose=False)
    chatbot, _ = other.predict(handle_file(str(path)), api_name="/import_chat")[:2]
    texts = [t for m in chatbot for t in texts_of(m)]
    assert any("remember this picture" in t for t in texts)
    assert any(item["type"] == "file" for item in chatbot[0]["content"])
