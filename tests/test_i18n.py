"""The UI's two languages (`mmchat.ui.i18n`, `mmchat.ui.strings`): every string in both, the
language a request gets, handlers run in it, and the page served in it. No browser, no model."""

from __future__ import annotations

import string
import zipfile

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


# Refusals from the real code paths (a wording changed there no longer matches its rule): adapter
# zips, merges and the adapter store, chat imports, Word files, training runs. No model loads.

def _refusal(fn, *args, **kwargs) -> str:
    from mmchat.errors import UserFacingError

    try:
        fn(*args, **kwargs)
    except UserFacingError as err:
        return str(err)
    raise AssertionError(f"{fn.__name__} refused nothing")


_FINGERPRINT = "ab" * 32
_SHAPES = {"": None, "model": None, "model.q_proj": (8, 16), "model.embed_tokens": (100, 8)}  # bundle.module_shapes
_W, _C, _CARD = "adapter_model.safetensors", "adapter_config.json", "adapter_card.json"
_LORA_A, _LORA_B = "base_model.model.model.q_proj.lora_A.weight", "base_model.model.model.q_proj.lora_B.weight"


def _safetensors(tensors: dict | None = None) -> bytes:
    """A safetensors file of zeros: {name: (dtype, shape)}."""
    import json
    import math
    import struct

    tensors = {_LORA_A: ("F32", [4, 8]), _LORA_B: ("F32", [16, 4])} if tensors is None else tensors
    header, offset = {}, 0
    for key, (dtype, shape) in tensors.items():
        size = math.prod(shape) * (4 if dtype == "F32" else 2)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def _lora_config(**changes) -> bytes:
    import json

    return json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **changes}).encode()


def _adapter_card(**changes) -> bytes:
    import json

    from mmchat.adapters.card import AdapterCard

    card = AdapterCard(name="mine", description="d", task="t", base_model="some/base", base_fingerprint=_FINGERPRINT,
                       rank=4, alpha=8, target_modules=("q_proj",))
    return json.dumps({**json.loads(card.to_json()), **changes}).encode()


def _adapter(**members) -> dict:
    """A good adapter zip's members, some replaced (by file name, under its folder)."""
    good = {_C: _lora_config(), _W: _safetensors(), _CARD: _adapter_card()}
    return {f"mine/{name}": data for name, data in {**good, **members}.items()}


def _zip_refusal(members: dict | None = None, *, raw: bytes | None = None, shapes=_SHAPES, limits: dict | None = None,
                 **kwargs) -> str:
    """What `import_adapter_zip` says about mine.zip (these members, these bytes, or no file)."""
    import tempfile
    from pathlib import Path

    from mmchat.adapters.bundle import ZipLimits, import_adapter_zip
    from mmchat.adapters.store import AdapterStore

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mine.zip"
        if raw is not None:
            path.write_bytes(raw)
        elif members is not None:
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        return _refusal(import_adapter_zip, path, AdapterStore(Path(folder) / "store"), _FINGERPRINT, shapes,
                        ZipLimits(**(limits or {})), **kwargs)


def _visual_card() -> bytes:
    return _adapter_card(projector={"file": "projector.safetensors", "feature_spec": {"grid": 4}, "tokens_per_image": 4,
                                    "feature_dim": 8})


def _export_without_config() -> str:
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from mmchat.adapters.bundle import export_adapter_zip

    with tempfile.TemporaryDirectory() as folder:
        stored = SimpleNamespace(name="mine", folder=Path(folder), card=SimpleNamespace(projector={}, soft_prompt={}))
        return _refusal(export_adapter_zip, stored, Path(folder) / "mine.zip")


def _merge_into_existing_folder() -> str:
    import tempfile

    from mmchat.adapters.merge import merge_adapter

    with tempfile.TemporaryDirectory() as folder:
        return _refusal(merge_adapter, None, None, None, folder).replace(folder, "/data/merged/mine")


def _merge_without_projector() -> str:
    import json
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from mmchat.adapters.merge import _visual_parts

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "mine").mkdir()
        card = SimpleNamespace(to_json=lambda: json.dumps({"projector": {"file": "projector.safetensors"}}))
        return _refusal(_visual_parts, SimpleNamespace(name="mine", folder=Path(folder) / "mine", card=card))


def _store_refusal(act) -> str:
    """`act(store, root)` on an empty adapter store; its refusal, with the temporary root as /data/adapters."""
    import tempfile
    from pathlib import Path

    from mmchat.adapters.store import AdapterStore

    with tempfile.TemporaryDirectory() as root:
        return act(AdapterStore(Path(root)), Path(root)).replace(root, "/data/adapters")


def _stored_folder_refusal(*files: tuple[str, bytes]) -> str:
    def act(store, root):
        (root / "mine").mkdir()
        for name, data in files:
            (root / "mine" / name).write_bytes(data)
        return _refusal(store.read, root / "mine")

    return _store_refusal(act)


def _publish_refusal(read_only: bool = False, taken: bool = False, name: str = "mine") -> str:
    import dataclasses

    from mmchat.adapters.card import AdapterCard
    from mmchat.adapters.store import AdapterStore

    def act(store, root):
        if taken:
            (root / "mine").mkdir()
        card = dataclasses.replace(AdapterCard.from_json(_adapter_card().decode()), name=name)
        return _refusal(AdapterStore(root, read_only=read_only).publish, card, lambda folder: None)

    return _store_refusal(act)


def _shipped_refusal(delete: bool) -> str:
    from mmchat.adapters.store import AdapterStore

    def act(store, root):
        (root / "mine").mkdir()
        shipped = AdapterStore(root, read_only=True)
        if delete:
            return _refusal(shipped.delete, "mine")
        return _refusal(AdapterStore(root / "user", shipped=shipped).check_not_shipped, "mine")

    return _store_refusal(act)


def _chat_refusal(payload: dict) -> str:
    from mmchat.errors import InvalidUpload
    from mmchat.session import _validated_export

    try:
        _validated_export(payload, "chat.json")
    except InvalidUpload as err:
        return str(err)
    raise AssertionError("the export was accepted")


def _chat_export(**fields) -> str:
    import json

    from mmchat.session import EXPORT_FORMAT

    return json.dumps({"format": EXPORT_FORMAT, "messages": [], **fields})


def _chat_import_refusal(name: str, data: bytes | dict) -> str:
    """What `ChatSession.import_chat` says about the file `name` (bytes, or a zip's members)."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from mmchat.session import ChatSession

    session = SimpleNamespace(_refuse_while_streaming=lambda action: None, _parse_export=ChatSession._parse_export)
    session._open_zip_export = lambda source: ChatSession._open_zip_export(session, source)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if isinstance(data, dict):
            with zipfile.ZipFile(path, "w") as zf:
                for member, content in data.items():
                    zf.writestr(member, content)
        else:
            path.write_bytes(data)
        return _refusal(ChatSession.import_chat, session, path)


def _docx(members: dict, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


_DOCUMENT = {"word/document.xml": b"<w:document>" + b"<w:p>hello</w:p>" * 200 + b"</w:document>"}


def _central_field(data: bytes, offset: int, value: int) -> bytes:
    """The first member's central-directory field at `offset` (from its PK\\1\\2) set to `value`."""
    import struct

    at = data.index(b"PK\x01\x02") + offset
    return data[:at] + struct.pack("<I", value) + data[at + 4:]


def _corrupt_deflate() -> bytes:
    data = bytearray(_docx(_DOCUMENT))
    start = 30 + len("word/document.xml")  # past the local header: the deflate stream
    data[start:start + 4] = b"\xff" * 4
    return bytes(data)


def _load_refusal(source: bytes | str, name: str = "report.docx", **limits) -> str:
    """What `load_file` says about an upload (bytes, or a path) called `name`."""
    import tempfile
    from pathlib import Path

    from mmchat.errors import InvalidUpload
    from mmchat.knowledge.loaders import KnowledgeLimits, load_file

    with tempfile.TemporaryDirectory() as folder:
        try:
            load_file(source, store_dir=Path(folder), limits=KnowledgeLimits(**limits), original_name=name)
        except InvalidUpload as err:
            return str(err)
    raise AssertionError(f"{name} was loaded")


def _loader_refusal(make: str, error: Exception, *args: str) -> str:
    """The refusal a loader's `make` (`_reader_failed`, `_damaged_pdf`) builds from a reader's error."""
    from mmchat.knowledge import loaders

    return str(getattr(loaders, make)(error, *args))


def _server_refusal(step: str) -> str:
    """A loader's refusal when the server's disk fails (a file where a folder should be)."""
    import tempfile
    from pathlib import Path

    from mmchat.files import store_atomic
    from mmchat.knowledge.loaders import _make_work_dir

    with tempfile.TemporaryDirectory() as folder:
        blocker = Path(folder) / "blocker"
        blocker.write_bytes(b"x")
        if step == "work":
            return _refusal(_make_work_dir, blocker / "work", "a.pdf")
        return _refusal(store_atomic, b"x", "ab", ".pdf", blocker / "store", "a.pdf")


def _run_refusal(act, state: str | None = None) -> str:
    """`act(manager, run_id)` on a run manager holding one run in `state` (none: no run)."""
    import json
    import tempfile
    from pathlib import Path

    from mmchat.training.runs import RunFiles, RunManager

    run_id = "20250101-120000-mine"
    with tempfile.TemporaryDirectory() as root:
        if state:
            (Path(root) / run_id).mkdir()
            (Path(root) / run_id / "run.json").write_text(json.dumps({"training": {"name": "mine", "max_steps": 80}}))
            RunFiles(Path(root) / run_id).write_status(state=state, adapter="mine")
        return act(RunManager(Path(root)), run_id)


def _busy(manager, run_id) -> str:
    from types import SimpleNamespace

    from mmchat.training.runs import RunManager

    return _refusal(RunManager._refuse_if_busy, SimpleNamespace(active=lambda: run_id, files=manager.files))


def _finetuner_refusal(method: str, *args, config=None, runtime=None, **kwargs) -> str:
    from types import SimpleNamespace

    from mmchat.training.service import Finetuner

    service = SimpleNamespace(config=config, runtime=runtime)
    for name in ("require_offline", "reserved_names", "base_preset"):
        setattr(service, name, getattr(Finetuner, name).__get__(service))
    return _refusal(getattr(Finetuner, method), service, *args, **kwargs)


def _runtime(kind: str):
    from types import SimpleNamespace

    info = SimpleNamespace(kind=kind, preset="mystery")
    return SimpleNamespace(wait_ready=lambda: None, backend=SimpleNamespace(info=info))


def _prepared(**changes):
    from types import SimpleNamespace

    return SimpleNamespace(**{"train": [1], "held_out": [], "visual": False, "source": "data.jsonl", "bad_count": 0,
                              "max_length": 256, **changes})


def _name_problem(name: str) -> str:
    from mmchat.adapters.card import name_problem

    return name_problem(name)


def _training(**values):
    from types import SimpleNamespace

    return SimpleNamespace(**values)


def _finetuning(enabled: bool = True, max_steps: int = 1000):
    from types import SimpleNamespace

    return SimpleNamespace(finetune=SimpleNamespace(enabled=enabled, max_steps=max_steps))


def _merged_summary(visual=(), dequantized=None) -> str:
    from pathlib import Path

    from mmchat.adapters.merge import MergedModel

    return MergedModel(Path("/data/merged/shapes"), "shapes", "bfloat16", dequantized, "AutoModelForCausalLM",
                       "AutoTokenizer", 270_000_000, tuple(visual)).summary


MESSAGES = [  # (the English message, or a function producing it; words its Chinese must contain)
    (_merged_summary, ["已把 'shapes' 合并到 /data/merged/shapes", "AutoModelForCausalLM.from_pretrained", "AutoTokenizer 加载"]),
    (lambda: _merged_summary(("projector.safetensors", "soft_prompt.safetensors"), "bitsandbytes 4-bit (nf4)"),
     ["projector.safetensors 和 soft_prompt.safetensors 复制在权重旁边", "merged_card.json", "反量化的 bfloat16 副本"]),
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
    # ----- adapter zips (bundle.py), the real import on a crafted zip -----
    (lambda: _zip_refusal(raw=b"%PDF-1.4 not a zip"),
     ["mine.zip：不是 zip 压缩包（看起来是 PDF）", "可接受：只含一个 peft LoRA 文件夹", "adapter_model.safetensors"]),
    (lambda: _zip_refusal(raw=b"PK\x03\x04 damaged"), ["无法按 zip 读取：File is not a zip file", "可接受：只含一个"]),
    (lambda: _zip_refusal(None), ["mine.zip：无法读取文件（No such file or directory）"]),
    (lambda: _zip_refusal(_adapter(), limits={"max_zip_bytes": 100}),
     ["zip 文件大小为", "超过了上限 100 字节", "可接受：不超过 100 字节 的 zip 文件"]),
    (lambda: _zip_refusal(_adapter(**{"README.md": b"x", "notes.txt": b"x"})), ["含有不应有的文件 'mine/notes.txt'"]),
    (lambda: _zip_refusal({"../evil.txt": b"x"}),
     ["成员 '../evil.txt' 用 '..' 跳出了所在文件夹", "且成员名须为普通的相对路径"]),
    (lambda: _zip_refusal(_adapter(**{"README.md": bytes(3 << 20)})),
     ["成员 'mine/README.md' 解压后膨胀了", "疑似 zip 炸弹", "可接受：解压后膨胀不超过 100 倍的成员"]),
    (lambda: _zip_refusal(_adapter(**{"adapter_model.bin": b"x"})),
     ["'mine/adapter_model.bin' 是 pickle 格式的权重", "可接受：仅限 adapter_model.safetensors"]),
    (lambda: _zip_refusal({f"a/{_C}": _lora_config(), f"b/{_W}": _safetensors()}), ["文件分散在多个文件夹中（a, b）"]),
    (lambda: _zip_refusal({f"mine/{_W}": _safetensors()}), ["mine.zip：其中没有 adapter_config.json"]),
    (lambda: _zip_refusal(_adapter(**{_C: b"{nope"})),
     ["adapter_config.json 不是有效的 JSON（Expecting", "可接受：peft LoRA 适配器的 adapter_config.json（peft_type 为 LORA"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(peft_type="IA3")})), ["peft_type 是 'IA3'，不是 LoRA 适配器"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(r=0)})), ["秩 r=0，不在 1..256 范围内"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(init_lora_weights="pissa")})),
     ["init_lora_weights 是 'pissa'：加载它会改写基础模型的权重", "path_initial_model_for_weight_conversion"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(layer_replication=[[0, 1]])})),
     ["设置了 layer_replication：它会复制基础模型的层", "可接受：作用于基础模型各模块的普通 LoRA 适配器"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(target_modules="(q")})),
     ["target_modules '(q' 不是有效的正则表达式", "可接受：当前加载的基础模型中有的目标模块，例如 embed_tokens, q_proj"]),
    (lambda: _zip_refusal(_adapter(**{_C: _lora_config(target_modules=["k_proj"])})), ["当前加载的基础模型中没有目标模块 'k_proj'"]),
    (lambda: _zip_refusal(_adapter(**{_W: b"abc"})),
     ["adapter_model.safetensors 太短，不是 safetensors 文件（3 字节）", "可接受：safetensors 格式的 adapter_model.safetensors"]),
    (lambda: _zip_refusal(_adapter(**{_W: _safetensors({_LORA_A: ("BF16", [4, 8])}).replace(b'"BF16"', b'"I8"  ')})),
     ["的数据类型是 'I8'", "可接受：数据类型为 F32, F16, BF16 的张量"]),
    (lambda: _zip_refusal(_adapter(**{_W: _safetensors({_LORA_A: ("F32", [4, 9])})})),
     ["的形状是 [4, 9]，但当前加载的基础模型中模块 'model.q_proj' 的输入特征数是 8", "可接受：在当前加载的基础模型上训练的适配器"]),
    (lambda: _zip_refusal(_adapter(**{_W: _safetensors({"base_model.model.model.q_proj.weight": ("F32", [4, 8])})})),
     ["的形状是 [4, 8]；当前加载的基础模型中模块 'model.q_proj' 的权重形状是 [16, 8]"]),
    (lambda: _zip_refusal(_adapter(**{_W: _safetensors({_LORA_A: ("F32", [4, 8]), _LORA_B: ("F32", [16, 2])})})),
     ["模块 'model.q_proj' 的 LoRA 矩阵秩不一致（[2, 4]）"]),
    (lambda: _zip_refusal(_adapter(), name="Bad Name"), ["名称 'Bad Name' 无效", "最多 48 个字符，以字母或数字开头"]),
    (lambda: _zip_refusal(_adapter(**{_CARD: b"{"})),
     ["adapter_card.json：不是有效的 JSON", "可接受：mmchat 的 adapter_card.json"]),
    (lambda: _zip_refusal(_adapter(**{_CARD: _adapter_card(base_fingerprint="cd" * 32)}), base_model="other/base"),
     ["训练所用的基础模型是 some/base（指纹 cdcdcdcdcdcd…）", "当前加载的基础模型 other/base（指纹 abababababab…）"]),
    (lambda: _zip_refusal(_adapter(**{_CARD: _adapter_card(rank=8)})),
     ["adapter_card.json 写的秩是 8，但 adapter_config.json 写的是 r=4"]),
    (lambda: _zip_refusal({f"mine/{_C}": _lora_config(), f"mine/{_W}": _safetensors()}, shapes=dict.fromkeys(_SHAPES)),
     ["其中没有 adapter_card.json，而且它的 LoRA 形状无法全部", "没有卡片的 zip 只在其形状与当前加载的基础模型相符时才接受"]),
    (lambda: _zip_refusal(_adapter(**{_CARD: _visual_card()})),
     ["adapter_card.json 列出了投影器 projector.safetensors，但 zip 中没有它", "可接受：视觉适配器的 projector.safetensors"]),
    (_export_without_config, ["适配器 'mine' 缺少 adapter_config.json，无法导出"]),
    # ----- merging (merge.py) and the adapter store (store.py, card.py) -----
    (_merge_into_existing_folder, ["/data/merged/mine 已存在；请为合并后的模型另选一个文件夹"]),
    (_merge_without_projector, ["适配器 'mine'：它的卡片列出了投影器 projector.safetensors，但 mine 中没有；没有合并任何内容"]),
    (lambda: "adapter 'mine' was trained on some/base (fingerprint 0123456789ab…), but the base given to merge into is "
             "another model (fingerprint ba9876543210…); merge it into the base it was trained on",
     ["要合并进去的基础模型是 另一个模型（指纹 ba9876543210…）", "请把它合并到训练时所用的基础模型中"]),
    (lambda: "adapter 'mine' has no adapter_model.safetensors; only safetensors adapters are merged",
     ["适配器 'mine' 缺少 adapter_model.safetensors；只能合并"]),
    (lambda: "adapter 'mine' could not be merged (NaNs detected)", ["适配器 'mine' 无法合并（NaNs detected）"]),
    (lambda: "the merged model was written with pickle-format files (pytorch_model.bin); only safetensors are accepted",
     ["pickle 格式的文件（pytorch_model.bin）"]),
    (lambda: "the model given to merge into already carries LoRA layers (is it the serving model?); merge into a fresh "
             "copy from mmchat.backends.registry.load_base_copy",
     ["已经带有 LoRA 层", "mmchat.backends.registry.load_base_copy"]),
    (lambda: "the base is quantized (gptq) and transformers cannot dequantize it (not supported); merging needs a "
             "base in bfloat16/float32 or bitsandbytes 4-/8-bit", ["基础模型经过量化（gptq）", "无法对它反量化（not supported）"]),
    (lambda: _stored_folder_refusal(), ["mine：缺少 adapter_card.json（适配器不完整）"]),
    (lambda: _stored_folder_refusal((_CARD, _adapter_card(name="other"))), ["mine：它的卡片把它命名为 'other'"]),
    (lambda: _stored_folder_refusal((_CARD, _adapter_card())), ["mine：缺少 adapter_model.safetensors"]),
    (lambda: _stored_folder_refusal((_CARD, _visual_card()), (_W, b"x")),
     ["它的卡片列出了投影器 projector.safetensors，但文件夹中没有（可接受：save_projector 写出的"]),
    (lambda: _stored_folder_refusal((_CARD, _adapter_card()), (_W, b"x"), (_C, b"{}")),
     ["mine：adapter_config.json 没有 peft_type"]),
    (lambda: _publish_refusal(taken=True), ["名为 'mine' 的适配器已存在；请删除它或换一个名字"]),
    (lambda: _publish_refusal(name="Bad Name"), ["适配器名称 'Bad Name' 无效；请使用 a-z"]),
    (lambda: _publish_refusal(read_only=True), ["/data/adapters 存放的是自带的适配器，只读；'mine' 应放到用户自己的存储中"]),
    (lambda: _shipped_refusal(delete=False), ["'mine' 是自带适配器的名字"]),
    (lambda: _shipped_refusal(delete=True), ["'mine' 是自带的适配器（/data/adapters），只读；只能删除你上传或训练的适配器"]),
    (lambda: _store_refusal(lambda store, root: _refusal(store.delete, "nope")), ["存储中没有名为 'nope' 的适配器"]),
    (lambda: _name_problem("base"), ["适配器名称 'base' 是保留名称", "'my-base'"]),
    # ----- importing a chat (session.py): the real import on a bad file, the real check on bad fields -----
    (lambda: _chat_import_refusal("chat.json", b"{nope"), ["chat.json：不是有效的 JSON（JSONDecodeError"]),
    (lambda: _chat_import_refusal("chat.json", b'{"format": "x"}'), ["不是 mmchat 的对话导出文件（应为格式 'mmchat.chat/1'）"]),
    (lambda: _chat_import_refusal("notes.txt", b"x"), ["notes.txt：不是对话导出文件", "可接受：mmchat 导出的 .zip 或 chat.json"]),
    (lambda: _chat_import_refusal("chat.zip", {"x.txt": b"x"}), ["chat.zip：zip 中没有 chat.json", "可接受：mmchat 导出的 zip"]),
    (lambda: _chat_import_refusal("chat.zip", {"chat.json": _chat_export(images={_FINGERPRINT: {"file": "a.png"}})}),
     ["chat.zip：zip 中缺少图片 'a.png'"]),
    (lambda: _chat_refusal({"images": []}), ["'images' 必须是以 sha256 为键的对象"]),
    (lambda: _chat_refusal({"images": {"nope": {}}}), ["图片 id 'nope' 不是 sha256"]),
    (lambda: _chat_refusal({"images": {_FINGERPRINT: {}}}), ["chat.json：images[abababababab] 缺少 'file'"]),
    (lambda: _chat_refusal({"system_prompt": 5}), ["system_prompt 的值是 5；可接受：字符串"]),
    (lambda: _chat_refusal({"messages": {}}), ["'messages' 必须是消息列表"]),
    (lambda: _chat_refusal({"messages": ["hi"]}), ["messages[0] 必须是对象，实际是 str"]),
    (lambda: _chat_refusal({"messages": [{"role": "bot", "text": "hi"}]}),
     ["messages[0].role 的值是 'bot'；可接受：user, assistant, note"]),
    (lambda: _chat_refusal({"messages": [{"role": "user", "text": "hi", "adapter": 5}]}), ["可接受：str 或 null"]),
    (lambda: _chat_refusal({"messages": [{"role": "user", "text": "hi", "image_ids": [_FINGERPRINT]}]}),
     ["messages[0] 引用了图片", "但导出文件里没有它"]),
    (lambda: _chat_refusal({"messages": [{"role": "assistant", "text": "hi", "retrieval": {"hits": {}}}]}),
     ["messages[0].retrieval.hits 必须是列表，实际是 dict"]),
    (lambda: _chat_refusal({"messages": [{"role": "assistant", "text": "hi", "retrieval": {"notes": [1]}}]}),
     ["messages[0].retrieval.notes 必须是字符串列表"]),
    # ----- damaged, oversized and unreadable uploads (knowledge/loaders.py), the real loader on crafted files -----
    (lambda: _load_refusal(b"PK\x03\x04" + bytes(64)),
     ["report.docx：不是有效的 Word .docx 文件（ZIP 容器已损坏或不完整：File is not a zip file）", "可接受：PDF、Word"]),
    (lambda: _load_refusal(_docx({"a.xml": b"<x/>"})), ["是不含 word/document.xml 的 ZIP 压缩包，不是 Word 文档"]),
    (lambda: _load_refusal(_docx({f"f{n}.xml": b"" for n in range(10_001)}, zipfile.ZIP_STORED)),
     [".docx 里有 10,001 个文件；上限为 10,000（疑似 zip 炸弹，已拒绝）"]),
    (lambda: _load_refusal(_docx(_DOCUMENT), max_unzipped_bytes=1024), [".docx 解压后为 3.1 KB；上限为 1 KB（疑似 zip 炸弹"]),
    (lambda: _load_refusal(_docx(_DOCUMENT), max_docx_xml_bytes=1024),
     ["文档的 XML 解压后为 3.1 KB（word/document.xml：3.1 KB）；上限为 1 KB（解析它需要", "请把文档拆分成较小的文件"]),
    (lambda: _load_refusal(_docx({**_DOCUMENT, "word/media/big.bin": bytes(2 << 20)})), [".docx 的压缩比为", "上限为 100:1"]),
    (lambda: _load_refusal(_docx(_DOCUMENT, zipfile.ZIP_BZIP2)),
     ["ZIP 容器已损坏：word/document.xml 使用了不支持的压缩方法", "请重新保存文档后再上传"]),
    (lambda: _load_refusal(_central_field(_docx(_DOCUMENT), 42, 1)), ["找不到 word/document.xml 的本地文件头"]),
    (lambda: _load_refusal(_central_field(_docx(_DOCUMENT), 24, 10)),
     ["report.docx：word/document.xml 解压后超过了 ZIP 目录中声明的 10 字节"]),
    (lambda: _load_refusal(_corrupt_deflate()), ["ZIP 容器已损坏：word/document.xml: Error -3", "请重新保存文档"]),
    (lambda: _loader_refusal("_reader_failed", KeyError("word/document.xml"), "report.docx", "docx"),
     ["无法按 Word (.docx) 格式读取（KeyError"]),
    (lambda: _loader_refusal("_damaged_pdf", ValueError("Stream has ended unexpectedly"), "a.pdf"),
     ["PDF 已损坏或不完整", "请重新导出"]),
    (lambda: _load_refusal("/nonexistent/a.pdf", "a.pdf"), ["a.pdf：找不到文件；请重新上传。"]),
    (lambda: _load_refusal(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "old.doc"),
     ["旧格式的 .doc 文件", "请另存为不带密码的 .docx"]),
    (lambda: _load_refusal(b"GIF89a" + bytes(100), "a.gif"), ["a.gif：不支持 GIF 图片"]),
    (lambda: _load_refusal(_docx({"a.txt": b"x"}), "a.zip"), ["检测到 不是 Word 文档的 ZIP 压缩包"]),
    (lambda: _load_refusal(bytes(range(128, 256)) * 4, "a.txt"),
     ["无法识别文本的编码：不是 UTF-8（偏移 0 处有无法解码的字节）", "请另存为 UTF-8", "可接受的编码：UTF-8"]),
    (lambda: _load_refusal(b"abc\x01\x02\x03\x04\x05\x06" * 50, "a.txt"), ["含有 300 个控制字符（二进制数据）"]),
    (lambda: _load_refusal(b"# a\n\n# b\n\n# c\n", "a.md", max_sections=2), ["Markdown 有超过 2 个章节"]),
    (lambda: _load_refusal(b"<html><body>" + b"<div>" * 10, "a.html", max_html_depth=5),
     ["HTML 元素嵌套了超过 5 层；上限为 5 层；请简化页面"]),
    (lambda: _load_refusal(b"x" * 2000, "a.txt", max_file_bytes=1000), ["上限为 1000 字节"]),
    (lambda: _server_refusal("work"), ["a.pdf：服务器无法创建工作副本", "请稍后再试。"]),
    (lambda: _server_refusal("store"), ["a.pdf：上传的文件无法保存到服务器上"]),
    # ----- training runs (training/runs.py) and the fine-tuning service (service.py) -----
    (lambda: _run_refusal(lambda manager, run_id: _refusal(manager.files, "nope")), ["没有训练运行 'nope'；已有的运行：无"]),
    (lambda: _run_refusal(lambda manager, run_id: _refusal(manager.resume, run_id), "done"),
     ["运行 20250101-120000-mine 已经完成；它的适配器是 'mine'"]),
    (lambda: _run_refusal(lambda manager, run_id: _refusal(manager.stop, run_id), "done"), ["不在训练中（当前状态：已完成）"]),
    (lambda: _run_refusal(_busy, "stopped"), ["已经有一个训练在运行：20250101-120000-mine（适配器 'mine'，第 0/? 步）；一次只能训练一个"]),
    (lambda: "a run named 20250101-120000-mine was started this second; try again", ["这一秒启动", "请再试一次"]),
    (lambda: "could not create the run folder in /data/runs: No space left on device",
     ["无法在 /data/runs 中创建运行文件夹：No space left on device"]),
    (lambda: "run 20250101-120000-mine stopped before its first step ended: nothing to keep", ["没有可保留的内容"]),
    (lambda: _finetuner_refusal("prepare", eval_fraction=0.7), ["eval_fraction 0.7 超出范围；可接受：大于 0 且小于 0.5"]),
    (lambda: _finetuner_refusal("prepare", max_length=10), ["max_length 10 超出范围；可接受：32..8192 之间的整数"]),
    (lambda: _finetuner_refusal("prepare"), ["请选择一个内置数据集，或上传一个文件"]),
    (lambda: _finetuner_refusal("prepare", builtin="nope"), ["内置数据集 'nope' 不存在；可接受：one-word"]),
    (lambda: _finetuner_refusal("settings", "nope"), ["预设 'nope' 不存在"]),
    (lambda: _finetuner_refusal("settings", "quick", target_modules="everything"), ["目标 'everything' 无效"]),
    (lambda: _finetuner_refusal("settings", "quick", name="mine", description="d", config=_finetuning(max_steps=5)),
     ["超过了本应用的上限 5（[finetune] max_steps）；可接受：1..5"]),
    (lambda: "visual targets 'x' are not valid; accepted: projector only, projector + LoRA", ["视觉目标 'x' 无效"]),
    (lambda: "projector-first steps 0 are not valid for two-stage training; accepted: a whole number of steps >= 1 "
             "(the projector alone, then both)", ["步数 0 无效", "不小于 1 的整数步数"]),
    (lambda: "prompt tokens 99 is out of range; accepted: a whole number 1..64 (10-20 is usual)",
     ["提示 token 数 99 超出范围；可接受：1..64 之间的整数（通常为 10-20）"]),
    (lambda: _finetuner_refusal("start", None, None, config=_finetuning(enabled=False)), ["这里已关闭微调"]),
    (lambda: _finetuner_refusal("require_offline", "the built-in shapes dataset", runtime=_runtime("llava")),
     ["内置的 shapes 数据集训练的是 offline 模型的图像通路；当前加载的模型是 'mystery'（llava）", "--preset offline"]),
    (lambda: _finetuner_refusal("base_preset", runtime=_runtime("llava")), ["当前加载的模型 'mystery' 不是训练器能加载的预设之一"]),
    (lambda: _finetuner_refusal("start", _prepared(), None, visual=object(), config=_finetuning(),
                                runtime=_runtime("offline")),
     ["视觉预设（", "data.jsonl 不是这个数据集：请选择 shapes"]),
    (lambda: _finetuner_refusal("start", _prepared(visual=True, source="builtin:shapes"), None, config=_finetuning()),
     ["builtin:shapes 训练的是图像通路：请选择一个视觉预设"]),
    (lambda: _finetuner_refusal("start", _prepared(), _training(max_length=512), config=_finetuning()),
     ["max_length 从 256 改成了 512；请重新验证"]),
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
