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


# ----- messages written outside the UI (`mmchat.ui.messages`) ---------------------------------

def _in(language: str, fn, *args):
    token = i18n._current.set(language)
    try:
        return fn(*args)
    finally:
        i18n._current.reset(token)


def _busy_note() -> str:
    import threading
    from types import SimpleNamespace

    from mmchat.knowledge.base import KnowledgeBase, _Job

    jobs = [_Job(["a.pdf", "b.md", "c.txt", "d.docx", "e.html"], done=0)]
    return KnowledgeBase.busy_note(SimpleNamespace(_jobs_lock=threading.Lock(), _jobs=jobs))


def _ingest_summary() -> str:
    from mmchat.knowledge.base import IngestReport
    from mmchat.knowledge.store import DocumentRecord

    records = [DocumentRecord(f"{n:064x}", f"doc{n}.pdf", "pdf", 10, 15 + n, 1, 0.0, "x") for n in range(2)]
    return IngestReport(added=records, duplicates=["guide.md"], seconds=1.23,
                        failed=[("e.txt", "e.txt: file is empty (0 bytes); accepted: PDF, Word (.docx), Markdown, "
                                 "HTML, plain text (UTF-8/UTF-16/GB18030/Windows-1252), and PNG/JPEG/WebP images.")]
                        ).summary()


def _estimate(measured: bool) -> str:
    from types import SimpleNamespace

    from mmchat.training.service import Finetuner

    stub = SimpleNamespace(measured_seconds_per_example=lambda visual: (0.31, "20250101-120000-lora") if measured else None)
    return Finetuner.estimate(stub, SimpleNamespace(max_steps=80, batch_size=8, grad_accum=1), 100)


def _relevance_floor() -> str:
    from mmchat.knowledge.retrieval import Hit, RetrievalResult, apply_relevance_floor

    hit = Hit(id="x", doc_id="d", file_name="a.pdf", text="t", score=0.5, relevance=0.11)
    result = RetrievalResult(query="q", hits=[hit], best_relevance=0.11)
    apply_relevance_floor(result, 0.22)
    return result.info[0]


MESSAGES = [  # (the English message, or a function producing it; words its Chinese must contain)
    (_busy_note, ["正在建立索引", "a.pdf", "等另外 2 个", "索引完成后"]),
    (_ingest_summary, ["已索引 2 个文件（31 个片段），用时 1.2 秒", "已经索引过：guide.md", "已拒绝 e.txt：文件是空的",
                       "可接受：PDF、Word"]),
    (lambda: "cancelled; files not yet indexed were skipped and nothing is half-indexed", ["已取消"]),
    (lambda: "nothing to index", ["没有要索引的文件"]),
    (lambda: "waiting for another upload to finish indexing…", ["正在等待另一次上传"]),
    (lambda: "guide.pdf: embedded 32/64 chunks (1/2)", ["guide.pdf：已向量化 32/64 个片段（1/2）"]),
    (lambda: "guide.pdf: reading (2/3)", ["guide.pdf：读取中（2/3）"]),
    (lambda: "guide.pdf: updating the keyword (BM25) index (1/1)", ["关键词（BM25）索引"]),
    (_relevance_floor, ["没有足够相关的来源", "0.11", "0.22"]),
    (lambda: "the question has no words to search for", ["没有可以检索的词"]),
    (lambda: "the question points at a picture in the chat; documents count only for what it names", ["图片"]),
    (lambda: "'Whole document' needs one or more documents chosen in the filter, together under 20000 characters; "
             "used the best chunks instead.", ["整篇文档", "20000"]),
    (lambda: "big.pdf: splits into more than 2,000 chunks; the limit is 2,000 per file; split it into smaller files.",
     ["big.pdf：切分后超过 2,000 个片段", "每个文件上限为 2,000 个", "请拆分成较小的文件"]),
    (lambda: "x.pdf: not a PDF file (it has no %PDF- header; found plain text); accepted: PDF, Word (.docx), Markdown, "
             "HTML, plain text (UTF-8/UTF-16/GB18030/Windows-1252), and PNG/JPEG/WebP images.", ["x.pdf：不是 PDF 文件"]),
    (lambda: "scan.pdf: the PDF has no text layer (scanned?); OCR is not supported; upload a PDF with selectable "
             "text, or the document as Word, Markdown or text.", ["没有文字层", "不支持 OCR"]),
    (lambda: "The question is about the attached image, so documents were not used (best match: relevance 0.31, "
             "1 shared term(s); needs 2 terms and 0.45). Mention the documents to use them.", ["附带的图片", "0.31", "0.45"]),
    (lambda: "Only 1 of 2 retrieved sources fit in the model's context.", ["只有 1 个"]),
    (lambda: "The conversation outgrew the model's 2048-token context: the oldest 2 message(s) are no longer sent "
             "to the model.", ["最早的 2 条消息"]),
    (lambda: "The knowledge base is still opening (starting); this answer does not use the documents.",
     ["知识库仍在打开（启动中）", "本回答没有使用文档"]),
    (lambda: "The knowledge base is unavailable (disk full); this answer does not use the documents.",
     ["知识库不可用（disk full）"]),
    (lambda: "Retrieval failed (ConnectionError: gone); this answer does not use the knowledge base.", ["检索失败"]),
    (lambda: "cannot clear the chat while an answer is streaming; stop it first", ["不能清空对话", "请先停止它"]),
    (lambda: "the message is empty; type a question or attach an image", ["消息是空的"]),
    (lambda: "the model is still loading (loading the language model); try again in a moment",
     ["模型仍在加载（正在加载语言模型）"]),
    (lambda: "the knowledge base is still opening (starting); try again shortly", ["知识库仍在打开", "请稍后再试"]),
    (lambda: "the tiny model takes no LoRA adapters", ["tiny 模型不支持 LoRA 适配器"]),
    (lambda: "json: could not be loaded (OSError: bad file)", ["json：无法加载（OSError: bad file）"]),
    (lambda: "mine: trained on some/base (fingerprint 0123456789ab…), not the loaded base other/base "
             "(fingerprint ba9876543210…)", ["mine：训练所用的基础模型是 some/base"]),
    (lambda: _estimate(True), ["80 步，约 3 分钟", "20250101-120000-lora"]),
    (lambda: _estimate(False), ["80 步；"]),
    (lambda: "**builtin:one-word**: 120 usable rows, 2 bad rows\n- formats: chat 120\n- tokens per row: p50 30, "
             "p95 60, max 80; cutoff 256 (2 over it)\n- split: 108 train, 12 eval\n\n2 bad rows are listed below; "
             "fix them, or train on the 120 usable rows.",
     ["120 行可用，2 行有问题", "- 格式：chat 120", "最大 80；上限 256（2 行超出）", "- 划分：108 行训练", "有问题的 2 行"]),
    (lambda: "the row is 300 tokens once rendered, more than the cutoff (max_length) of 256; raise max_length or "
             "shorten it", ["300 个 token"]),
]


@pytest.mark.parametrize("make,chinese", MESSAGES, ids=[str(n) for n in range(len(MESSAGES))])
def test_a_backend_message_is_shown_in_chinese_and_stays_english_for_english(make, chinese):
    from mmchat.ui.messages import localize

    english = make()
    translated = _in("zh-CN", localize, english)
    for words in chinese:
        assert words in translated, (english, translated)
    assert _in("en", localize, english) == english


def test_an_unknown_message_passes_through_unchanged():
    from mmchat.ui.messages import localize

    for text in ["something new happened", "a: b; c", "name.pdf: a brand new reason", "", "已经是中文"]:
        assert _in("zh-CN", localize, text) == text
    assert _in("zh-CN", localize, None) is None


def test_the_rules_compile_and_their_templates_use_only_their_groups():
    import re

    from mmchat.ui.messages import RULES

    for pattern, template, converters in RULES:
        groups = set(re.compile(pattern).groupindex)
        assert set(converters) <= groups, pattern
        if isinstance(template, str):
            assert fields(template) <= groups, pattern
