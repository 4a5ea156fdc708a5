"""End to end in a real headless Chromium (Debian's, driven by playwright): upload a photo of
a cat, ask, and watch the offline model's answer stream in. Saves a screenshot under
`tests/artifacts/`. Needs `/usr/bin/chromium` (installed by `.ci/run`; on CI its absence
fails the test instead of skipping it).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest


pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, launch_app, offline_backend, standin_encoder):
    return launch_app(tmp_path_factory.mktemp("browser-data"), offline_backend, standin_encoder,
                      preset="offline", generation={"max_new_tokens": 48, "temperature": 0.0})


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is not installed; .ci/run must install it")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_upload_cat_photo_and_watch_the_answer_stream(app_url, browser, tmp_path, cat_image):
    cat_path = tmp_path / "chelsea the cat.png"
    cat_image.save(cat_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
    # The status line reports the offline stand-in plainly.
    page.wait_for_function(
        "document.querySelector('#mmchat-status')?.innerText.includes('Offline stand-in')", timeout=60_000
    )

    page.set_input_files("#mmchat-input input[type=file]", str(cat_path))
    page.wait_for_selector("#mmchat-input img", timeout=30_000)  # the upload's thumbnail
    page.fill("#mmchat-input textarea", "What animal is this?")
    page.keyboard.press("Enter")

    bot = page.locator("#mmchat-chatbot .message.bot, #mmchat-chatbot [data-testid='bot']").last
    seen: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline:
        if bot.count():
            text = bot.inner_text()
            if text and (not seen or text != seen[-1]):
                seen.append(text)
            if "tok/s" in text:  # the per-answer trace appears once the answer is complete
                break
        time.sleep(0.03)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-chat.png"), full_page=True)
    assert seen, "no answer appeared"
    final = seen[-1]
    assert "tok/s" in final, f"answer did not finish: {final!r}"
    assert "cat" in final.lower(), final
    assert len(seen) >= 3, f"expected to see the answer grow while streaming, saw {seen}"
    # the user's message shows the image and the labels the encoder gave it
    user_text = page.locator("#mmchat-chatbot").inner_text()
    assert "tiger cat" in user_text
    page.close()


def test_index_a_pdf_then_ask_and_see_the_cited_sources(app_url, browser):
    """The issue's outcome in a browser: Knowledge tab upload with progress, then a cited answer."""
    pdf = Path(__file__).resolve().parents[1] / "knowledge" / "demo" / "llava-overview.pdf"
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
    page.get_by_role("tab", name="Knowledge").click()
    page.set_input_files("#mmchat-knowledge-files input[type=file]", str(pdf))
    page.wait_for_function(
        "document.querySelector('#mmchat-knowledge-files')?.innerText.includes('llava-overview.pdf')", timeout=30_000
    )
    page.click("#mmchat-knowledge-index")
    page.wait_for_function(
        "document.querySelector('#mmchat-knowledge-result')?.innerText.includes('indexed 1 file')", timeout=120_000
    )
    page.wait_for_function(
        "document.querySelector('#mmchat-knowledge-documents')?.innerText.includes('llava-overview.pdf')",
        timeout=30_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-knowledge.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    page.fill("#mmchat-input textarea", "What data did LLaVA use to pre-train its projector?")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('#mmchat-chatbot')?.innerText.includes('tok/s')", timeout=120_000
    )
    chat_text = page.locator("#mmchat-chatbot").inner_text()
    assert "Sources: [1] llava-overview.pdf, p." in chat_text, chat_text
    page.wait_for_function(
        "document.querySelector('#mmchat-sources')?.innerText.includes('llava-overview.pdf, p. 2')", timeout=30_000
    )
    page.screenshot(path=str(ARTIFACTS / "browser-rag-answer.png"), full_page=True)
    page.close()


def test_clicking_a_citation_opens_its_source(browser):
    """A click on `[n]` opens source n's passage (links survive gradio's HTML sanitiser)."""
    import socket

    import gradio as gr

    from mmchat.ui.render import chatbot_messages
    from mmchat.ui.style import CITATION_HEAD

    retrieval = {"used": 2, "hits": [
        {"file_name": "guide.pdf", "page": 2, "text": "Rank 8 trains 65,536 parameters.\nMore.", "evidence": "Rank 8 trains 65,536 parameters."},
        {"file_name": "notes.md", "text": "<script>alert(1)</script> Other.", "evidence": "Other."},
    ]}

    from types import SimpleNamespace

    answer = SimpleNamespace(role="assistant", text="It trains 65,536 parameters [2].", retrieval=retrieval,
                             stats=None, image_ids=[])
    session = SimpleNamespace(images={}, history=[answer])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with gr.Blocks() as demo:
        gr.Chatbot(value=chatbot_messages(session), elem_id="answers")
    demo.launch(prevent_thread_lock=True, server_port=port, head=CITATION_HEAD, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        page.wait_for_selector("details.mmchat-source", timeout=60_000)
        opened = "Array.from(document.querySelectorAll('details.mmchat-source')).map(d => d.open)"
        assert page.evaluate(opened) == [False, False]
        assert "guide.pdf, p. 2 — “Rank 8 trains 65,536 parameters.”" in page.inner_text("#answers")
        assert "(not cited)" in page.inner_text("#answers")
        page.locator("a.mmchat-cite", has_text="[2]").click()
        page.wait_for_function(f"{opened}[1] === true", timeout=5_000)
        assert page.evaluate(opened) == [False, True]
        assert page.locator("#answers script").count() == 0  # document text is shown, never run
        page.close()
    finally:
        demo.close()
