"""The bad inputs outside testing sent through /chat and /knowledge_add, one test each.

Each input is built like the reported one (a 16000 x 1 PNG, 100,000 nested <div>s, 100,000
Markdown headers, a .docx whose XML inflates to 185 MB, Latin-1 / Shift-JIS / random bytes,
a 1.9 M-character line, PNG metadata bombs, a 6325 x 6325 image) and each test asserts the
message (what is wrong and what is accepted) or the correct handling, a time bound and a
resident-memory bound (sampled with psutil while the call runs; Pillow and zlib allocate
outside tracemalloc's view). Real parts throughout: Pillow, the LlamaIndex readers, MiniLM,
EfficientNet-Lite0, embedded Chroma, a real Gradio server driven by gradio_client, and a real
SIGKILL. The one stand-in: the "slow parse" killed in `test_killed_parse_*` is a reader
replaced by a sleep in the child process (a genuinely minutes-long parse is what the other
limits here now refuse).
"""

from __future__ import annotations

import io
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from PIL import Image

from mmchat.attachments import ingest_upload
from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload
from mmchat.knowledge.loaders import ENCODINGS, WORK_DIR_NAME, KnowledgeLimits, load_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests" / "fixtures" / "rag" / "docs"
MB = 1024 * 1024


@contextmanager
def bounded(seconds: float, megabytes: float):
    """Assert the block runs within `seconds` and grows resident memory by < `megabytes`."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        watcher.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    grown = (peak[0] - base) / MB
    assert elapsed < seconds, f"took {elapsed:.2f} s; the bound is {seconds} s"
    assert grown < megabytes, f"resident memory grew {grown:.0f} MB; the bound is {megabytes} MB"


def refused_upload(data: bytes, name: str, store: Path, limits: UploadLimits = UploadLimits()) -> str:
    with pytest.raises(InvalidUpload) as info:
        ingest_upload(data, store_dir=store, limits=limits, original_name=name)
    assert not store.exists() or list(store.iterdir()) == []
    return str(info.value)


def refused_file(data: bytes, name: str, store: Path, limits: KnowledgeLimits = KnowledgeLimits()) -> str:
    with pytest.raises(InvalidUpload) as info:
        load_file(data, store_dir=store, limits=limits, original_name=name)
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    leftovers = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert leftovers == [], leftovers
    return message


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def warm_readers():
    """Import the readers first, so no test's time bound pays for importing pandas."""
    import bs4  # noqa: F401
    import llama_index.readers.file  # noqa: F401


# ---------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("size", [(16000, 1), (1, 16000)], ids=["wide", "tall"])
def test_a_16000_by_1_png_is_refused_at_once_naming_the_aspect_ratio(tmp_path, size):
    data = png(size)
    with bounded(seconds=0.5, megabytes=30):
        message = refused_upload(data, "strip.png", tmp_path / "store")
    w, h = size
    assert message == (
        f"strip.png: image is {w} x {h} pixels, an aspect ratio of 16,000:1; the limit is 20:1 "
        "(image encoders scale the short side to their input size, so a thin strip would become "
        "millions of pixels); crop it and upload it again."
    )
    # the knowledge base refuses it the same way
    with bounded(seconds=0.5, megabytes=30):
        assert "aspect ratio of 16,000:1" in refused_file(data, "strip.png", tmp_path / "kb")


def test_an_image_at_the_aspect_limit_is_accepted(tmp_path):
    attachment = ingest_upload(png((400, 20)), store_dir=tmp_path / "store", limits=UploadLimits(),
                               original_name="banner.png")
    assert (attachment.width, attachment.height) == (400, 20)
    message = refused_upload(png((401, 20)), "banner.png", tmp_path / "s2")
    assert "an aspect ratio of 20.1:1; the limit is 20:1" in message


def test_the_classifier_crops_a_strip_instead_of_resizing_it_to_millions_of_pixels():
    """Callers that skip the upload check (the encoders are public) are guarded too."""
    from mmchat.vision.base import bounded_aspect
    from mmchat.vision.imagenet import shared_classifier

    classifier = shared_classifier()
    classifier.classify([Image.new("RGB", (64, 64))])  # warm up
    strip = Image.new("RGB", (16000, 1), (200, 10, 10))
    assert bounded_aspect(strip).size == (20, 1)
    square = Image.new("RGB", (300, 200))
    assert bounded_aspect(square) is square
    with bounded(seconds=3.0, megabytes=150):  # unguarded: 17-23 s and +4 GB
        labels = classifier.classify([strip, strip.rotate(90, expand=True)], top_k=1)
    assert len(labels) == 2 and all(len(row) == 1 for row in labels)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize(
    "kind, payload_head, where, named",
    [
        (b"zTXt", b"Comment\x00\x00", "before IDAT", "zTXt text"),
        (b"iCCP", b"icc\x00\x00", "before IDAT", "iCCP colour profile"),
        (b"iTXt", b"Comment\x00\x01\x00\x00\x00", "before IDAT", "iTXt text"),
        (b"zTXt", b"Comment\x00\x00", "after IDAT", "zTXt text"),
    ],
)
def test_png_metadata_chunk_bombs_are_called_what_they_are(tmp_path, kind, payload_head, where, named):
    base = png((8, 8))
    bomb = _png_chunk(kind, payload_head + zlib.compress(bytes(50 * MB), 9))  # 50 KB -> 50 MB
    at = 33 if where == "before IDAT" else base.rindex(b"IEND") - 4
    data = base[:at] + bomb + base[at:]
    with bounded(seconds=2.0, megabytes=40):
        message = refused_upload(data, "meta.png", tmp_path / "store")
    assert "corrupt" not in message and "truncated" not in message
    assert message == (
        f"meta.png: the image carries an oversized compressed metadata chunk ({named}) that "
        "inflates past 1 MB (refused as a decompression bomb); re-export the image without that "
        "metadata and upload it again."
    )


def test_a_pixel_count_just_over_the_limit_is_shown_exactly(tmp_path):
    data = png((6325, 6325), mode="1")  # 40,005,625 pixels; both round to "40 megapixels"
    with bounded(seconds=2.0, megabytes=40):
        message = refused_upload(data, "big.png", tmp_path / "store")
    assert message == (
        "big.png: image is 6325 x 6325 pixels (40,005,625 pixels); the limit is 40,000,000 pixels."
    )


# ---------------------------------------------------------------------------------------------
# knowledge uploads: structure


def test_100000_nested_divs_are_refused_in_well_under_a_second(tmp_path):
    html = ("<html><body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000 + "</body></html>")
    assert len(html) > 1_000_000
    with bounded(seconds=2.0, megabytes=60):
        message = refused_file(html.encode(), "nested.html", tmp_path / "store")
    assert message == (
        "nested.html: the HTML nests elements more than 2,000 deep; the limit is 2,000 levels; "
        "simplify the page or upload it as plain text."
    )


def test_html_within_the_depth_limit_and_a_wide_page_read_in_linear_time(tmp_path):
    deep = "<html><body>" + "<div>" * 200 + "inner text" + "</div>" * 200 + "<p>after</p></body></html>"
    loaded = load_file(deep.encode(), store_dir=tmp_path / "a", original_name="deep.html")
    assert loaded.documents[0].text == "inner text\nafter"
    # 20,000 sibling paragraphs: the old insert_after/serialize round trip took 21 s.
    wide = "<html><body>" + "".join(f"<p>line {i}</p>" for i in range(20_000)) + "</body></html>"
    with bounded(seconds=5.0, megabytes=300):
        loaded = load_file(wide.encode(), store_dir=tmp_path / "b", original_name="wide.html")
    lines = loaded.documents[0].text.split("\n")
    assert lines[:2] == ["line 0", "line 1"] and lines[-1] == "line 19999" and len(lines) == 20_000
    # old hand-written HTML: html.parser nests every unclosed <p>, 500 levels deep here
    old = "<body>" + "".join(f"<p>paragraph {i}\n" for i in range(500)) + "</body>"
    loaded = load_file(old.encode(), store_dir=tmp_path / "d", original_name="old.html")
    assert loaded.documents[0].text.split("\n") == [f"paragraph {i}" for i in range(500)]
    # the depth limit is a setting
    message = refused_file(deep.encode(), "deep.html", tmp_path / "c", KnowledgeLimits(max_html_depth=100))
    assert "nests elements more than 100 deep; the limit is 100 levels" in message


def test_100000_markdown_headers_are_refused_before_parsing(tmp_path):
    md = "".join(f"# h{i}\nx\n" for i in range(100_000))
    with bounded(seconds=2.0, megabytes=60):
        message = refused_file(md.encode(), "headers.md", tmp_path / "store")
    assert message == (
        "headers.md: the Markdown has more than 5,000 sections (headers); the limit is 5,000 per "
        "file; split it into smaller files."
    )
    # headers inside a code block are not sections; 5,000 real ones are accepted
    ok = "".join(f"# h{i}\nx\n" for i in range(5_000)) + "```\n" + "# not a header\n" * 10_000 + "```\n"
    loaded = load_file(ok.encode(), store_dir=tmp_path / "ok", original_name="ok.md")
    assert len(loaded.documents) == 5_000


def test_deeply_nested_markdown_headers_cannot_repeat_megabytes_of_header_text(tmp_path):
    md = "".join("#" * level + " " + "h" * 100 + "\nx\n" for level in range(1, 300))
    assert len(md) < 100_000  # small itself; its sections would repeat ~4.5 M characters
    with bounded(seconds=2.0, megabytes=60):
        message = refused_file(md.encode(), "levels.md", tmp_path / "store")
    assert "nested headers would repeat more than 2,000,000 characters of header text" in message


def _docx_with_xml(xml_bytes: int) -> bytes:
    """A real .docx (python-docx), its document.xml padded with paragraphs to `xml_bytes`."""
    from docx import Document as DocxDocument

    doc = DocxDocument()
    doc.add_paragraph("A real opening paragraph.")
    buf = io.BytesIO()
    doc.save(buf)
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "lorem", "ipsum"]
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        parts = {info.filename: src.read(info) for info in src.infolist()}
    xml = parts["word/document.xml"].decode()
    head, tail = xml.split("</w:body>")
    para = "<w:p><w:r><w:t>{}</w:t></w:r></w:p>"
    filler, size = [], len(xml)
    while size < xml_bytes:
        chunk = para.format(" ".join(rng.choice(words) for _ in range(60)))
        filler.append(chunk)
        size += len(chunk)
    parts["word/document.xml"] = (head + "".join(filler) + "</w:body>" + tail).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for name, content in parts.items():
            dst.writestr(name, content)
    return out.getvalue()


def test_docx_whose_xml_inflates_far_past_the_limit_is_refused_from_the_zip_directory(tmp_path):
    data = _docx_with_xml(40 * MB)  # like the report: MBs on disk, far more unpacked, ratio < 100
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("word/document.xml")
    assert info.file_size / info.compress_size < 100  # passes the zip-bomb ratio check
    with bounded(seconds=0.5, megabytes=60):
        message = refused_file(data, "report.docx", tmp_path / "store")
    assert message.startswith("report.docx: the document's XML unpacks to 40.8 MB "
                              "(word/document.xml: 40")
    assert "split the document into smaller files" in message


# ---------------------------------------------------------------------------------------------
# knowledge uploads: encodings

def byte_noise(seed: int, low: int, high: int, n: int = 20_000) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(low, high) for _ in range(n))


GERMAN = "Sehr geehrte Damen und Herren, die Größe der Straße in München ist schön. Müller aß Äpfel.\n" * 20
JAPANESE = "日本語のテキストです。これはテストの文章です。東京は大きい都市です。\n" * 20


def test_latin1_german_is_accepted_as_windows_1252(tmp_path):
    """Decision: Western European text in Latin-1/Windows-1252 is accepted when plausible
    (accented letters inside mostly-ASCII words), so German, French, Spanish files work."""
    loaded = load_file(GERMAN.encode("latin-1"), store_dir=tmp_path / "s", original_name="brief.txt")
    assert loaded.documents[0].text == GERMAN.strip()
    french = "« Où est l’hôtel ? » — déjà vu… 5 €\n" * 10
    loaded = load_file(french.encode("cp1252"), store_dir=tmp_path / "s", original_name="fr.txt")
    assert loaded.documents[0].text == french.strip().replace(" \n", "\n")


@pytest.mark.parametrize(
    "name, data, why",
    [
        ("japanese.txt", JAPANESE.encode("shift_jis"), "read as GB18030 it is not plausible text"),
        ("random.txt", random.Random(3).randbytes(20_000), "not a supported file (found binary data)"),
        ("high.txt", byte_noise(4, 0x80, 0x100),
         "not UTF-8"),
        ("cjk-ish.txt", byte_noise(5, 0xA1, 0xFF),
         "read as GB18030 it is not plausible text"),
    ],
)
def test_shift_jis_and_random_bytes_are_refused_naming_the_accepted_encodings(tmp_path, name, data, why):
    with bounded(seconds=2.0, megabytes=60):
        message = refused_file(data, name, tmp_path / "store")
    assert why in message, message
    if name != "random.txt":  # NULs and control bytes: binary, not text in an odd encoding
        assert f"accepted encodings: {ENCODINGS}." in message and "save it as UTF-8" in message
    else:
        assert "plain text (UTF-8/UTF-16/GB18030/Windows-1252)" in message


def test_gb18030_chinese_is_still_accepted(tmp_path):
    text = "知识库测试：中文文本。第二行，含标点！北京是中国的首都。\n" * 50
    loaded = load_file(text.encode("gb18030"), store_dir=tmp_path / "s", original_name="中文.txt")
    assert loaded.documents[0].text == text.strip()


# ---------------------------------------------------------------------------------------------
# the knowledge base: chunks, deadline, working copies


def test_a_long_line_without_spaces_is_split_into_bounded_chunks(make_knowledge):
    from llama_index.core import Document

    from mmchat.knowledge.base import LONG_RUN, MAX_CHARS_PER_TOKEN, _break_long_runs

    kb = make_knowledge(seed_demo=False)
    bound = kb.splitter.chunk_size * MAX_CHARS_PER_TOKEN
    # the reported size, through the splitter the knowledge base uses
    line = "a" * 1_900_000
    with bounded(seconds=20.0, megabytes=600):
        nodes = kb.splitter.get_nodes_from_documents([Document(text=_break_long_runs(line))])
    sizes = [len(n.text) for n in nodes]
    assert len(nodes) > 1000 and max(sizes) <= bound, (len(nodes), max(sizes))
    assert "".join(n.text.replace(" ", "") for n in nodes).count("a") >= 1_900_000
    # and a smaller one through a whole ingest: the stored chunks are bounded too
    report = kb.ingest([(("x" * 60_000).encode(), "oneline.txt")])
    assert report.added and not report.failed, report.summary()
    stored = kb.store.text_collection.get(where={"doc_id": report.added[0].doc_id}, include=["documents"])
    assert len(stored["documents"]) >= 60_000 // bound
    assert max(len(t) for t in stored["documents"]) <= bound
    assert LONG_RUN < bound


def test_only_unbreakable_runs_get_spaces():
    from mmchat.knowledge.base import _break_long_runs

    chinese = "知识库支持中文文档，检索很快。" * 200  # no spaces, but punctuation to split at
    prose = "Ordinary words, sentences; and a https://example.com/" + "p" * 150 + " link. " * 50
    for text in (chinese, prose):
        assert _break_long_runs(text) == text
    assert _break_long_runs("x" * 450) == "x" * 200 + " " + "x" * 200 + " " + "x" * 50


def test_chunk_count_and_parse_time_are_limited_by_config(make_knowledge):
    kb = make_knowledge(seed_demo=False, max_chunks=5, chunk_size=64, chunk_overlap=0)
    text = " ".join(f"Sentence number {i} says something." for i in range(400)).encode()
    report = kb.ingest([(text, "long.txt")])
    assert not report.added
    assert report.failed == [("long.txt", "long.txt: splits into more than 5 chunks; the limit is 5 "
                                           "per file; split it into smaller files.")]
    assert kb.counts()["chunks"] == 0 and [p for p in kb.files_dir.iterdir() if p.is_file()] == []
    kb2 = make_knowledge(seed_demo=False, path=str(Path(kb.root).parent / "kb2"), max_parse_seconds=1e-6)
    report = kb2.ingest([(b"# Title\n\nSome text.", "quick.md")])
    (name, message), = report.failed
    assert message.startswith("quick.md: reading it took longer than the 1e-06 s allowed")
    # the base keeps serving: a normal upload right after is indexed
    assert kb.ingest([(b"Just a short note.", "note.txt")]).added


def test_killed_parse_leaves_no_copy_in_system_temp_and_the_next_start_purges_it(tmp_path, make_knowledge):
    systemp = tmp_path / "system-temp"
    systemp.mkdir()
    root = tmp_path / "knowledge"
    files = root / "files"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mmchat.knowledge import loaders\n"
        "def slow(text, work):\n"
        "    loaders._write(work, 'document.md', text)  # the reader's own copy, as before\n"
        "    print('PARSING', flush=True)\n"
        "    time.sleep(120)\n"
        "loaders._markdown_parts = slow\n"
        f"loaders.load_file(b'# Secret\\n\\nuser text', store_dir=Path({str(files)!r}), original_name='s.md')\n"
    )
    env = dict(os.environ, TMPDIR=str(systemp), TEMP=str(systemp), TMP=str(systemp))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        assert child.stdout.readline().strip() == b"PARSING"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert list(systemp.iterdir()) == [], "a reading copy went to the system temp folder"
    copies = list((files / WORK_DIR_NAME).rglob("document.md"))
    assert len(copies) == 1 and copies[0].read_bytes() == b"# Secret\n\nuser text"

    kb = make_knowledge(seed_demo=False, path=str(root))
    assert not kb.work_dir.exists(), "the leftover reading copy was not purged at start"
    assert kb.documents() == []


# ---------------------------------------------------------------------------------------------
# through the app: refusals are messages and the server keeps serving


@pytest.mark.slow
def test_the_app_refuses_the_bad_inputs_and_keeps_serving(tmp_path, launch_app, tiny_backend, standin_encoder,
                                                         text_embedder):
    from gradio_client import Client, handle_file

    from mmchat.config import KnowledgeConfig
    from mmchat.knowledge.base import KnowledgeBase

    kb = KnowledgeBase(KnowledgeConfig(path=str(tmp_path / "kb")), encoder=standin_encoder,
                       text_embedder=text_embedder)
    url = launch_app(tmp_path / "data", tiny_backend, standin_encoder, preset="tiny",
                     generation={"max_new_tokens": 4, "temperature": 0.0}, knowledge_base=kb)
    client = Client(url, verbose=False)
    bad = {
        "strip.png": png((16000, 1)),
        "nested.html": ("<div>" * 100_000 + "x" + "</div>" * 100_000).encode(),
        "headers.md": "".join(f"# h{i}\nx\n" for i in range(100_000)).encode(),
        "japanese.txt": JAPANESE.encode("shift_jis"),
    }
    paths = []
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        paths.append(handle_file(str(tmp_path / name)))
    started = time.perf_counter()
    result, table, *_ = client.predict(paths + [handle_file(str(DOCS / "tea-oolong.txt"))],
                                       api_name="/knowledge_add")
    assert time.perf_counter() - started < 60
    assert "indexed 1 file(s)" in result, result
    for needle in ("refused strip.png", "aspect ratio of 16,000:1", "refused nested.html",
                   "the limit is 2,000 levels", "refused headers.md", "more than 5,000 sections",
                   "refused japanese.txt", "accepted encodings"):
        assert needle in result, (needle, result)
    # the strip in a chat message is refused, and the chat still answers afterwards
    job = client.submit({"text": "look", "files": [handle_file(str(tmp_path / "strip.png"))]}, "", 4, 0.0, 0.9,
                        False, 2, api_name="/chat")
    job.result(timeout=60)
    assert job.outputs()[-1][0] == [], "the refused image adds nothing to the chat"
    job = client.submit({"text": "still there?", "files": []}, "", 4, 0.0, 0.9, False, 2, api_name="/chat")
    job.result(timeout=120)
    assert job.outputs()[-1][0][-1]["role"] == "assistant"
