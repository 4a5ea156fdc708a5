"""End to end in a real headless Chromium (Debian's, driven by playwright): upload a photo of
a cat, ask, and watch the offline model's answer stream in; index a PDF and see cited sources;
the layout a person sees at 1400×1000 and on a phone (390×844): chat and input on the first
screen, a one-line status, readable tables, Stop/Cancel active only while something runs;
the shipped examples answered in the app's default state (demo corpus indexed); and the
shipped adapters: one picked in Chat, base and two adapters side by side in Compare, their
cards in the Adapters tab. And the UI in Chinese: a zh-CN browser sees every tab in Chinese
(screenshots `zh-*.png`), and the English · 中文 switch picks a language for good.

Screenshots go to `$MMCHAT_TEST_ARTIFACTS` or `tests/artifacts/` (ignored by git). Needs
`/usr/bin/chromium` (installed by `.ci/run`; on CI its absence fails the test instead of
skipping it). Real models, real server; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest


pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MMCHAT_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
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
        "document.querySelector('#mmchat-status')?.innerText.includes('offline stand-in')", timeout=60_000
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
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
    # Indexed files leave the upload box (adding one more later sends only that one), and
    # Cancel goes quiet again once indexing has ended.
    page.wait_for_function(
        "!document.querySelector('#mmchat-knowledge-files')?.innerText.includes('llava-overview.pdf')",
        timeout=10_000,
    )
    page.wait_for_function("document.querySelector('#mmchat-knowledge-cancel')?.disabled", timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
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


def test_a_refused_image_is_dropped_and_the_text_kept(app_url, browser, tmp_path):
    """A file that is not an image is refused by name; the text comes back, the file does not."""
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"%PDF-1.4\n" + b"x" * 200)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
    page.set_input_files("#mmchat-input input[type=file]", str(fake))
    page.wait_for_selector("#mmchat-input img[src*='holiday.png']", timeout=30_000)  # its (broken) thumbnail
    page.fill("#mmchat-input textarea", "Where was this taken?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.innerText.includes('holiday.png:')", timeout=60_000)  # the warning
    page.wait_for_function(
        "document.querySelector('#mmchat-input textarea')?.value === 'Where was this taken?'", timeout=30_000
    )
    page.wait_for_selector("#mmchat-input img", state="detached", timeout=10_000)  # the refused file is gone
    page.close()


# ----- the default state: retrieval on, demo corpus indexed -------------------------------------

@pytest.fixture(scope="module")
def default_app_url(tmp_path_factory, launch_app, offline_backend, standin_encoder):
    """The app as `python app.py` starts it: knowledge base on, the demo corpus indexed."""
    return launch_app(tmp_path_factory.mktemp("browser-default"), offline_backend, standin_encoder,
                      preset="offline", generation={"max_new_tokens": 48, "temperature": 0.0},
                      knowledge={"seed_demo": True})


DEMO_INDEXED = "\\b[1-9]\\d* docs? · ready\\b"


def open_when_ready(browser, url: str, width: int, height: int, status: str = DEMO_INDEXED):
    """A page at this size once the status line matches `status` (default: the demo corpus is
    indexed and all is ready)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
    page.wait_for_function(
        "re => new RegExp(re).test(document.querySelector('#mmchat-status summary')?.innerText || '')",
        arg=status, timeout=300_000,
    )
    return page


def ask_example(page, question: str, answers_before: int) -> str:
    """Click the shipped example with this question, send it, and return the finished answer."""
    page.locator("#mmchat-examples button", has_text=question).first.click()
    page.wait_for_function(
        "q => document.querySelector('#mmchat-input textarea')?.value === q", arg=question, timeout=10_000
    )
    page.wait_for_selector("#mmchat-input img", timeout=10_000)  # the example's photo is attached
    page.locator("#mmchat-input textarea").press("Enter")
    # The answer is complete when its trace line (tok/s) shows; count only finished answers.
    page.wait_for_function(
        "n => document.querySelector('#mmchat-chatbot').innerText.split('tok/s').length - 1 > n",
        arg=answers_before, timeout=180_000,
    )
    # ...and the event has ended: the textbox is unlocked and Stop is off again.
    page.wait_for_function(
        "!document.querySelector('#mmchat-input textarea').disabled && document.querySelector('#mmchat-stop').disabled",
        timeout=30_000,
    )
    return page.locator("#mmchat-chatbot [data-testid='bot']").last.inner_text()


def answer_body(answer: str) -> str:
    """The answer's own words: without its sources footer, passages and trace line."""
    return re.split(r"\n\s*(?:Sources:|first token|no tokens)", answer)[0]


# For each visible table cell with text: the most lines any one of its words or runs of text
# wraps onto (line boxes more than 6 px apart), its width, and whether it is the last cell of
# its row (the excerpt column, which may wrap).
CELL_LINES_JS = """sel => Array.from(document.querySelectorAll(sel)).filter(c => c.offsetParent !== null).map(c => {
  let lines = 0;
  const walker = document.createTreeWalker(c, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim() || !node.parentElement.offsetParent) continue;
    const range = document.createRange(); range.selectNodeContents(node);
    const tops = Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => r.top).sort((a, b) => a - b);
    let n = tops.length ? 1 : 0;
    for (let i = 1; i < tops.length; i++) if (tops[i] - tops[i - 1] > 6) n++;
    lines = Math.max(lines, n);
  }
  return {text: c.innerText.trim().slice(0, 40), lines, width: c.getBoundingClientRect().width,
          last: c === c.parentElement.lastElementChild};
}).filter(c => c.text)"""


def box(page, selector: str) -> dict:
    """The element's box in page coordinates (independent of scrolling)."""
    return page.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {top: r.top + scrollY, bottom: r.bottom + scrollY, height: r.height, width: r.width}; }",
        selector,
    )


@pytest.mark.parametrize("width,height", [(1400, 1000), (390, 844)], ids=["desktop", "phone"])
def test_layout_first_screen_status_buttons_and_tables(default_app_url, browser, width, height):
    page = open_when_ready(browser, default_app_url, width, height)
    size = f"{width}x{height}"
    # One compact status line; the full status opens on demand.
    status = box(page, "#mmchat-status")
    assert status["height"] <= 48, f"the status takes {status['height']:.0f} px; one line expected"
    summary = page.locator("#mmchat-status summary").inner_text()
    assert "offline" in summary and "cpu" in summary and "stand-in" in summary, summary
    assert "Knowledge" not in page.locator("#mmchat-status").inner_text(), "full status shown without asking"
    page.locator("#mmchat-status summary").click()
    page.wait_for_function("document.querySelector('#mmchat-status').innerText.includes('documents ·')")
    page.locator("#mmchat-status summary").click()
    # Stop looks (and is) inactive while nothing runs.
    assert page.locator("#mmchat-stop").is_disabled()

    answer = ask_example(page, "What animal is this?", 0)
    assert answer.strip()
    page.wait_for_function(
        "(b => b.disabled && b.classList.contains('secondary'))(document.querySelector('#mmchat-stop'))",
        timeout=10_000,
    )
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(500)  # let the buttons' colour transition end before the screenshot
    # The chat and its input are on the first screen, before and after an answer.
    chat, field = box(page, "#mmchat-chatbot"), box(page, "#mmchat-input")
    assert field["bottom"] <= height, f"the input ends at {field['bottom']:.0f} px, below the {height} px screen"
    assert chat["top"] < height / 3 and chat["height"] >= 240, chat
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{size}.png"))
    page.screenshot(path=str(ARTIFACTS / f"chat-{size}-full.png"), full_page=True)

    page.get_by_role("tab", name="Knowledge").click()
    page.wait_for_function(
        "document.querySelector('#mmchat-knowledge-documents')?.innerText.includes('llava-overview.pdf')",
        timeout=30_000,
    )
    # One knowledge status line on this tab (the page-wide status keeps its details closed).
    visible = page.evaluate("document.body.innerText")
    assert visible.count("chunks ·") == 1, visible
    assert page.locator("#mmchat-knowledge-cancel").is_disabled()
    page.locator("#mmchat-knowledge-query textarea").fill("What rank should a LoRA adapter use?")
    page.click("#mmchat-knowledge-search")
    page.wait_for_selector("#mmchat-knowledge-hits table td", timeout=60_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"knowledge-{size}.png"), full_page=True)
    # Readable tables: no number, name or header wraps; the excerpt column keeps some width.
    hits = page.evaluate(CELL_LINES_JS, "#mmchat-knowledge-hits th, #mmchat-knowledge-hits td")
    assert len(hits) >= 6, hits
    wrapped = [c for c in hits if not c["last"] and c["lines"] > 1]
    assert not wrapped, f"search result cells wrap at {size}: {wrapped}"
    narrow = [c for c in hits if c["last"] and c["text"] and c["width"] < 120]
    assert not narrow, f"excerpt column too narrow at {size}: {narrow}"
    documents = page.evaluate(CELL_LINES_JS, "#mmchat-knowledge-documents th, #mmchat-knowledge-documents td")
    wrapped = [c for c in documents if c["lines"] > 1]
    assert documents and not wrapped, f"document table cells wrap at {size}: {wrapped}"
    page.close()


def test_shipped_examples_answered_in_the_default_state(default_app_url, browser):
    """Retrieval on, demo corpus indexed: the photo examples must still be answered from the
    photo (the demo documents are about LoRA, RAG and LLaVA, not cats or coffee)."""
    page = open_when_ready(browser, default_app_url, 1280, 900)
    cat = ask_example(page, "What animal is this?", 0)
    assert re.search(r"\b(cat|cats|kitten)\b", answer_body(cat), re.I), cat
    coffee = ask_example(page, "What is in the cup?", 1)
    assert re.search(r"\b(espresso|coffee)\b", answer_body(coffee), re.I), coffee
    page.close()


def pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a gradio dropdown by (the start of) its label."""
    page.click(f"#{elem_id} input")
    page.locator(f"#{elem_id} li[data-testid=dropdown-option]", has_text=option).first.click()
    page.keyboard.press("Escape")


@pytest.mark.parametrize("width,height", [(1400, 1000), (390, 844)], ids=["desktop", "phone"])
def test_pick_a_shipped_adapter_then_compare_columns_fill(app_url, browser, width, height):
    """The shipped adapters (adapters/ in the project) as a newcomer meets them: one picked in
    Chat answers and is named under its answer; Compare fills base + two adapters side by side."""
    page = open_when_ready(browser, app_url, width, height, status="\\b[3-9] adapters\\b.* ready\\b")
    pick(page, "mmchat-adapter", "one-word")
    page.fill("#mmchat-input textarea", "What colour is the sky on a clear day?")
    page.locator("#mmchat-input textarea").press("Enter")
    page.wait_for_function(
        "document.querySelector('#mmchat-chatbot').innerText.includes('tok/s')", timeout=120_000,
    )
    answer = page.locator("#mmchat-chatbot [data-testid='bot']").last.inner_text()
    assert "adapter one-word" in answer, answer
    assert len(answer_body(answer).split("adapter one-word")[0].split()) <= 3, answer

    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#mmchat-compare-run", timeout=10_000)
    page.wait_for_function(  # the default columns: base and the first two adapters
        "document.querySelectorAll('#mmchat-compare-columns .token').length === 3", timeout=30_000,
    )
    page.click("#mmchat-compare-run")
    for column in range(3):
        page.wait_for_function(
            "i => (document.querySelector('#mmchat-compare-col' + i)?.innerText || '').includes('tok/s')",
            arg=column, timeout=180_000,
        )
    texts = [page.locator(f"#mmchat-compare-col{i}").inner_text() for i in range(3)]
    assert texts[0].startswith("base") and "first token" in texts[0], texts
    assert len({t.split("first token")[0].split("\n", 1)[-1].strip() for t in texts}) == 3, texts
    diff = page.locator("#mmchat-compare-diff1")  # the second column against the first
    diff.wait_for(state="visible", timeout=10_000)
    assert texts[1].split("\n")[0] in diff.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"compare-{width}x{height}.png"), full_page=True)

    # The Adapters tab: one row per shipped adapter, and the first one's card with its held-out metric.
    page.get_by_role("tab", name="Adapters").click()
    page.wait_for_function(
        "document.querySelector('#mmchat-adapters-card')?.innerText.includes('held-out metric')", timeout=30_000,
    )
    table = page.locator("#mmchat-adapters-table").inner_text()
    assert all(name in table for name in ("one-word", "caption", "json")), table
    page.screenshot(path=str(ARTIFACTS / f"adapters-{width}x{height}.png"), full_page=True)
    page.close()


def fill_fields(page, values) -> None:
    """Type each (label, value) into its Fine-tune field and check it took."""
    for label, value in values:
        field = page.get_by_label(label)
        field.fill(value)
        field.press("Tab")
        assert field.input_value() == value, (label, field.input_value())


def start_training(page, timeout: int = 20_000) -> None:
    """Press Train and wait for the run to start (else fail with the tab's note)."""
    page.click("#mmchat-ft-train")
    try:
        page.wait_for_function(
            "(document.querySelector('#mmchat-ft-start-note')?.innerText || '').includes('Started run')", timeout=timeout)
    except Exception:
        raise AssertionError(page.locator("#mmchat-ft-start-note").inner_text()) from None


def test_finetune_upload_see_bad_rows_and_preview_train_and_pick_the_adapter_in_chat(app_url, browser, tmp_path):
    """The Fine-tune tab as a person uses it: upload a JSONL with two broken rows, see them named
    with their lines and the rows rendered with the answer highlighted, start a short run on
    the offline model (its own process), watch the chart move, and find the adapter in Chat;
    a phone-sized page opened afterwards redraws the whole finished run from its log."""
    rows = [json.dumps({"question": f"What is the code word number {i}?", "answer": "Banana."}) for i in range(20)]
    rows[2] = '{"question": "", "answer": "x"}'
    rows.insert(5, "{not json")
    data = tmp_path / "code words.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")

    page = open_when_ready(browser, app_url, 1400, 1000, status="\\bready\\b")
    page.get_by_role("tab", name="Fine-tune").click()
    page.set_input_files("#mmchat-ft-upload input[type=file]", str(data))
    page.wait_for_function("(document.querySelector('#mmchat-ft-dataset input')?.value || '').startsWith('your file')",
                           timeout=20_000)
    page.click("#mmchat-ft-validate")
    page.wait_for_function("(document.querySelector('#mmchat-ft-bad')?.innerText || '').includes('line 6')",
                           timeout=60_000)
    bad = page.locator("#mmchat-ft-bad").inner_text()
    assert "line 3" in bad and "question is empty" in bad and "not JSON" in bad, bad
    assert "19 usable rows" in page.locator("#mmchat-ft-summary").inner_text().replace("*", "")
    page.wait_for_selector("#mmchat-ft-preview mark.mmchat-supervised", timeout=10_000)
    assert "Banana." in page.locator("#mmchat-ft-preview mark.mmchat-supervised").first.inner_text()

    page.fill("#mmchat-ft-name textarea, #mmchat-ft-name input", "code-word")
    page.click("#mmchat-ft-train")  # refused: the bad rows are not accepted yet
    page.wait_for_function("(document.querySelector('#mmchat-ft-start-note')?.innerText || '').includes('not usable')",
                           timeout=20_000)
    page.locator("#mmchat-ft-accept input").check()
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("steps (0: epochs decide)").wait_for(state="visible", timeout=10_000)
    page.wait_for_timeout(300)  # the accordion's content settles
    fill_fields(page, (("steps (0: epochs decide)", "6"), ("batch size", "2"), ("held-out loss every N steps", "2"),
                       ("sample answers every N steps", "3")))
    start_training(page)
    page.wait_for_function("/step [2-6]\\/6/.test(document.querySelector('#mmchat-ft-progress')?.innerText || '')",
                           timeout=180_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "finetune-running-1400x1000.png"), full_page=True)
    page.wait_for_function("(document.querySelector('#mmchat-ft-result')?.innerText || '').includes('Published')",
                           timeout=300_000)
    page.wait_for_selector("#mmchat-ft-gallery", state="visible", timeout=10_000)
    assert "held-out metric" in page.locator("#mmchat-ft-result").inner_text()
    assert page.locator("#mmchat-ft-plot canvas, #mmchat-ft-plot svg").count() > 0
    page.screenshot(path=str(ARTIFACTS / "finetune-done-1400x1000.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    page.click("#mmchat-adapter input")
    page.wait_for_selector("#mmchat-adapter li[data-testid=dropdown-option]:has-text('code-word')", timeout=20_000)
    page.keyboard.press("Escape")
    page.close()

    phone = open_when_ready(browser, app_url, 390, 844, status="\\bready\\b")
    tab = phone.get_by_role("tab", name="Fine-tune")
    if not tab.is_visible():  # gradio folds tabs that do not fit into a menu
        phone.locator("button.overflow-menu, .overflow-dropdown button, [aria-label*='more' i]").first.click()
    phone.get_by_role("tab", name="Fine-tune").click()
    phone.wait_for_function("(document.querySelector('#mmchat-ft-progress')?.innerText || '').includes('step 6/6')",
                            timeout=30_000)  # the finished run, redrawn from its log
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 2, f"the Fine-tune tab is {width} px wide on a 390 px phone"
    phone.screenshot(path=str(ARTIFACTS / "finetune-390x844.png"), full_page=True)
    phone.close()


def test_finetune_the_shapes_pictures_with_the_quick_visual_preset_and_publish_a_visual_adapter(app_url, browser):
    """The issue's "done when" path in a real browser: pick the built-in shapes pictures (the
    quick visual preset and its targets come with them), validate and see the pictures, train
    a short run of the image pathway in its own process, and read the per-skill held-out
    scores (base through today's label pathway vs the adapter) when it is published."""
    page = open_when_ready(browser, app_url, 1400, 1000, status="\\bready\\b")
    page.get_by_role("tab", name="Fine-tune").click()
    page.click("#mmchat-ft-dataset input")
    page.click("li[data-testid=dropdown-option]:has-text('built-in: shapes')")
    page.wait_for_selector("#mmchat-ft-preset input[value='quick visual']:checked", timeout=20_000)
    page.wait_for_selector("#mmchat-ft-visual", state="visible", timeout=10_000)
    assert page.locator("#mmchat-ft-visual-targets input[value='projector + LoRA']").is_checked()
    page.get_by_text("Advanced", exact=True).click()
    steps = page.get_by_label("steps (0: epochs decide)")
    steps.wait_for(state="visible", timeout=10_000)
    page.wait_for_function("document.querySelector('#mmchat-ft-preset-info')?.innerText.includes('300 steps')",
                           timeout=20_000)  # the preset's fields are in: now they can be changed
    fill_fields(page, (("steps (0: epochs decide)", "4"), ("batch size", "4"), ("held-out fraction", "0.007")))
    page.click("#mmchat-ft-validate")
    page.wait_for_function("(document.querySelector('#mmchat-ft-summary')?.innerText || '').includes('1200 usable')",
                           timeout=120_000)
    assert "1200 train, 8 eval" in page.locator("#mmchat-ft-summary").inner_text()
    page.wait_for_selector("#mmchat-ft-preview-images img", timeout=20_000)  # the drawn pictures

    page.fill("#mmchat-ft-name textarea, #mmchat-ft-name input", "browser-shapes")
    start_training(page, timeout=30_000)
    page.wait_for_function(  # this run's result (an earlier run's may be shown until the new one is followed)
        "(document.querySelector('#mmchat-ft-result')?.innerText || '').includes('Published browser-shapes')",
        timeout=300_000)
    result = page.locator("#mmchat-ft-result").inner_text()
    assert "exact_match_colour" in result and "exact_match_count" in result and "projector + LoRA" in result, result
    assert "4 steps" in result, result
    page.wait_for_selector("#mmchat-ft-gallery", state="visible", timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "finetune-visual-done-1400x1000.png"), full_page=True)
    page.get_by_role("tab", name="Chat").click()
    page.click("#mmchat-adapter input")
    page.wait_for_selector("#mmchat-adapter li[data-testid=dropdown-option]:has-text('browser-shapes')", timeout=20_000)
    page.close()


# ----- the UI in Chinese ----------------------------------------------------------------------

# Every rendered text node (in an element that takes up room: closed accordions and hidden tabs
# do not; nor does what a closed <details> folds away), and every visible field's placeholder.
VISIBLE_TEXT_JS = """dataSelectors => {
  // Inside a closed <details> only its summary shows (Chromium still gives the rest boxes).
  const folded = el => {
    for (let d = el.closest('details'); d; d = d.parentElement && d.parentElement.closest('details')) {
      if (!d.open && !d.querySelector(':scope > summary')?.contains(el)) return true;
    }
    return false;
  };
  const shown = el => el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden' && !folded(el);
  const data = el => el.closest(dataSelectors.join(', '));
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!node.textContent.trim() || !parent || ['SCRIPT', 'STYLE'].includes(parent.tagName) || !shown(parent)
        || data(parent)) continue;
    out.push(node.textContent.trim());
  }
  for (const field of document.querySelectorAll('[placeholder]')) {
    const text = (field.getAttribute('placeholder') || '').trim();
    if (shown(field) && text) out.push(text);
  }
  return out;
}"""
# Where the page shows data, not UI: code (names, paths, ids), the model's inputs and answers
# (chat, Compare's columns, an adapter card's held-out examples, Fine-tune's samples, previews
# and evaluation), the documents' own text (a search hit's excerpt). The notes the session and
# the knowledge base add to a retrieval (the quoted lines of the sources panel) are checked:
# written in English outside the UI, they are shown translated (mmchat/ui/messages.py).
DATA_SELECTORS = [
    "code", "pre", "#mmchat-chatbot .message-row", "#mmchat-compare-answers", "#mmchat-adapters-card table:last-of-type",
    "#mmchat-ft-samples table", "#mmchat-ft-preview", "#mmchat-ft-gallery", ".mmchat-hits td:last-child",
]
# What may stay in Latin letters in a Chinese UI: names (of files, models, adapters, presets,
# devices, libraries, formats), units and the example prompts (the offline model reads only
# English, so its examples are English questions).
NAMES = re.compile(
    r"""[\w.-]+\.(?:pdf|docx|md|png|jpe?g|webp|json|jsonl|zip|safetensors|txt|html?)\b  # file names
    | (?:/|~)[\w./+-]+                                  # paths
    | `[^`]*` | \{[^}]*\} | “[^”]*” | builtin:\S+            # code, JSON, quoted literals, dataset ids
    | \b(?:[A-Za-z][\w.-]*-)+[\w.-]*\b                  # hyphenated ids: one-word, all-MiniLM-L6-v2
    | \b[A-Za-z]\w*_\w+\b                               # snake_case ids: q_proj, exact_match
    | \b(?:mmchat|LoRA|LORA|QLoRA|CLIP|BM25|RAG|LLM|LLaVA|Chroma|peft|safetensors|Gradio|API|VQA|MLP
         |JSON|JSONL|Word|PDF|HTML|Markdown|PNG|JPEG|WebP|docx|zip|Top-p|Top|top|k|token|alpha|dropout
         |MiB|MB|KB|GB|ms|tok|s|ETA|ID|vs|cpu|cuda|offline|tiny|base|caption|json|shapes|q|v|r|lr|English
         |ok|a-z|\d\w*)\b
    | What\ animal\ is\ this\?|What\ is\ in\ the\ cup\?   # the example prompts
    """,
    re.X,
)


def english_left(texts: list[str]) -> list[str]:
    """The texts with a Latin word (two letters or more) that is not a name."""
    return sorted({text for text in texts if re.search(r"[A-Za-z]{2,}", NAMES.sub(" ", text))})


@pytest.mark.parametrize("width,height", [(1400, 1000), (390, 844)], ids=["desktop", "phone"])
def test_a_chinese_browser_sees_every_tab_in_chinese(default_app_url, browser, width, height):
    """A zh-CN browser gets every tab in Chinese (gradio's own strings too), after an answer (its
    trace and sources) and a search; names stay as they are. Screenshots (to look at: without a
    CJK font Chromium draws boxes) go to the artifacts folder."""
    context = browser.new_context(locale="zh-CN", viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(default_app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
    page.wait_for_function(  # loaded, the demo corpus indexed: the status line says 就绪 (ready)
        "/篇文档 · 就绪/.test(document.querySelector('#mmchat-status summary')?.innerText || '')", timeout=300_000,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    left: dict[str, list[str]] = {}
    for index, tab in enumerate(["chat", "knowledge", "compare", "adapters", "finetune"]):
        page.locator("[role=tab]").nth(index).click()
        page.wait_for_timeout(2500)  # the tab's select event and its tables
        if tab == "chat":
            ask_example(page, "What animal is this?", 0)
        elif tab == "knowledge":
            page.locator("#mmchat-knowledge-query textarea").fill("LoRA 的秩应该选多少？")
            page.click("#mmchat-knowledge-search")
            page.wait_for_selector("#mmchat-knowledge-hits table td", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / f"zh-{tab}-{width}x{height}.png"), full_page=True)
        english = english_left(page.evaluate(VISIBLE_TEXT_JS, DATA_SELECTORS))
        if english:
            left[tab] = english
    context.close()
    assert not left, f"English left in a zh-CN browser at {width}x{height}: {json.dumps(left, ensure_ascii=False, indent=1)}"


def test_the_language_switch_picks_one_for_good(default_app_url, browser):
    """An English browser clicks 中文: the page and the server's lines turn Chinese, and stay so
    on the next visit (a cookie); English switches back."""
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def shown(url: str = "", click: str = "") -> tuple[str, str]:
        """The first tab's name and the status line, after going to `url` or clicking a language."""
        if click:
            with page.expect_navigation():  # the link reloads the page in that language
                page.click(f"#mmchat-lang a[lang='{click}']")
        else:
            page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#mmchat-input textarea", timeout=60_000)
        page.wait_for_function(  # the server's status line has come (it is not in the page's config)
            "/ready|就绪/.test(document.querySelector('#mmchat-status summary')?.innerText || '')", timeout=300_000)
        return page.locator("[role=tab]").first.inner_text(), page.locator("#mmchat-status summary").inner_text()

    tab, status = shown(default_app_url)
    assert tab == "Chat" and "ready" in status, (tab, status)
    tab, status = shown(click="zh-CN")
    assert tab == "对话" and "就绪" in status and "ready" not in status, (tab, status)
    tab, status = shown(default_app_url)  # no ?lang= now: the cookie remembers
    assert tab == "对话" and "就绪" in status, (tab, status)
    tab, status = shown(click="en")
    assert tab == "Chat" and "ready" in status, (tab, status)
    context.close()
