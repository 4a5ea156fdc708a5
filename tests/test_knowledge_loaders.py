"""Tests for `mmchat.knowledge.loaders`: sniffing, limits, refusals, readers, safe storage.

Every input is a real file built here (PDFs with fpdf2 and pypdf, DOCX with python-docx or
zipfile, images with Pillow from the shipped cat photo); nothing is mocked except a spy that
records which files get opened.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import random
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import pypdf
import pytest
from docx import Document as DocxDocument
from fpdf import FPDF
from PIL import Image

from mmchat.attachments import safe_display_name
from mmchat.errors import ConfigError, InvalidUpload, UserFacingError
from mmchat.knowledge.loaders import (
    ACCEPTED,
    SUPPORTED_KINDS,
    WORK_DIR_NAME,
    KnowledgeLimits,
    LoadedFile,
    load_file,
    sniff_kind,
)

REPO = Path(__file__).resolve().parents[1]
CAT_PNG = REPO / "knowledge" / "images" / "cat.png"
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch) -> Path:
    """The system temp dir, redirected where we can inspect it: reading copies go under the
    store's own `.work` folder, never here, so it must stay empty."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    assert list(scratch.iterdir()) == [], "the parsing copy was not removed"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def store_files(store: Path) -> list[Path]:
    """The kept copies in `store`; the readers' working folder must be gone by now."""
    if not store.exists():
        return []
    assert not (store / WORK_DIR_NAME).exists(), "a reading copy or its folder was left behind"
    return sorted(store.iterdir())


def refused(source, store: Path, *, name: str, limits: KnowledgeLimits = KnowledgeLimits()) -> str:
    """Load `source`, expect an InvalidUpload naming the file and nothing stored; return it."""
    with pytest.raises(InvalidUpload) as info:
        load_file(source, store_dir=store, limits=limits, original_name=name)
    message = str(info.value)
    assert isinstance(info.value, UserFacingError)
    assert message.startswith(f"{safe_display_name(name)}: "), message
    assert "Traceback" not in message
    assert store_files(store) == [], "a refused file left something in store_dir"
    return message


def make_pdf(pages: list[str | None], *, image: Path | None = None) -> bytes:
    """One page per entry: its text, or None for a page without text (an image if given)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text is not None:
            pdf.multi_cell(w=0, text=text)
        elif image is not None:
            pdf.image(str(image), x=10, y=10, w=100)
    return bytes(pdf.output())


def make_docx(paragraphs: list[str], *, table: list[list[str]] | None = None) -> bytes:
    doc = DocxDocument()
    for text in paragraphs:
        doc.add_paragraph(text)
    if table:
        grid = doc.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def deflated_zip(entries: dict[str, bytes | int], *, level: int = 9) -> bytes:
    """A ZIP whose int-valued entries are that many zero bytes, streamed in 1 MB chunks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, content in entries.items():
            if isinstance(content, int):
                with archive.open(name, "w") as fh:
                    for _ in range(content // MB):
                        fh.write(bytes(MB))
            else:
                archive.writestr(name, content)
    return buf.getvalue()


def image_bytes(fmt: str, size: tuple[int, int] | None = None) -> bytes:
    img = Image.open(CAT_PNG).convert("RGB")
    if size:
        img = img.resize(size)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------------------------------
# PDF


def test_pdf_gives_one_document_per_text_page_with_real_page_numbers(tmp_path, store):
    data = make_pdf(["alpha first page", None, "gamma third page", "delta fourth page"])
    src = write(tmp_path / "in" / "report.pdf", data)

    loaded = load_file(src, store_dir=store)

    assert isinstance(loaded, LoadedFile)
    assert loaded.kind == "pdf" and loaded.pages == 4
    assert [doc.metadata["page"] for doc in loaded.documents] == [1, 3, 4]
    texts = [doc.text for doc in loaded.documents]
    assert "alpha first page" in texts[0]
    assert "gamma third page" in texts[1]
    assert "delta fourth page" in texts[2]
    for doc in loaded.documents:
        assert set(doc.metadata) == {"file_name", "page"}
        assert doc.metadata["file_name"] == "report.pdf"
    assert loaded.text_chars == sum(len(t) for t in texts) > 0
    assert loaded.display_name == "report.pdf"
    assert loaded.size_bytes == len(data)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.path == store.absolute() / f"{loaded.sha256}.pdf"
    assert loaded.path.read_bytes() == data
    assert loaded.width is None and loaded.height is None


@pytest.mark.parametrize("with_image", [False, True], ids=["blank", "image-only"])
def test_pdf_without_any_text_is_refused_as_scanned(store, with_image):
    data = make_pdf([None, None], image=CAT_PNG if with_image else None)
    message = refused(data, store, name="scan.pdf")
    assert "has no text layer (scanned?)" in message
    assert "OCR is not supported" in message


def test_encrypted_pdf_is_refused(store):
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(["top secret plans"])))
    writer.encrypt("hunter2")
    buf = io.BytesIO()
    writer.write(buf)
    message = refused(buf.getvalue(), store, name="report.pdf")
    assert message == "report.pdf: the PDF is encrypted; remove the password and upload it again."


def test_pdf_encrypted_with_an_empty_user_password_is_read(store):
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(["open to all readers"])))
    writer.encrypt(user_password="", owner_password="owner-only")
    buf = io.BytesIO()
    writer.write(buf)
    assert pypdf.PdfReader(io.BytesIO(buf.getvalue())).is_encrypted
    loaded = load_file(buf.getvalue(), store_dir=store, original_name="open.pdf")
    assert "open to all readers" in loaded.documents[0].text


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_truncated_pdf_is_refused(store, keep):
    data = make_pdf([f"page {i} " + "lorem ipsum " * 50 for i in range(10)])
    message = refused(data[: int(len(data) * keep)], store, name="cut.pdf")
    assert "the PDF is damaged or incomplete" in message


def test_binary_renamed_pdf_is_refused(tmp_path, store):
    src = write(tmp_path / "in" / "invoice.pdf", random_bytes(4096))
    message = refused(src, store, name="invoice.pdf")
    assert "not a PDF file" in message and "%PDF-" in message
    assert "found binary data" in message
    assert message.endswith("accepted: " + ACCEPTED + ".")


def test_pdf_over_max_pages_is_refused(store):
    data = make_pdf(["one", "two", "three"])
    message = refused(data, store, name="book.pdf", limits=KnowledgeLimits(max_pages=2))
    assert "the PDF has 3 pages; the limit is 2 pages" in message
    assert load_file(data, store_dir=store, limits=KnowledgeLimits(max_pages=3)).pages == 3


# ---------------------------------------------------------------------------------------------
# DOCX


def test_docx_text_paragraphs_and_table_are_read(store):
    data = make_docx(
        ["Quarterly summary", "Revenue grew in every region.", "中文段落：知识库。"],
        table=[["Region", "Growth"], ["North", "12%"]],
    )
    loaded = load_file(data, store_dir=store, original_name="summary.docx")
    assert loaded.kind == "docx" and loaded.pages is None
    assert len(loaded.documents) == 1
    text = loaded.documents[0].text
    for expected in ("Quarterly summary", "Revenue grew in every region.", "中文段落：知识库。",
                     "Region", "Growth", "North", "12%"):
        assert expected in text
    assert "\n\n\n" not in text  # docx2txt's runs of blank lines are collapsed
    assert loaded.documents[0].metadata == {"file_name": "summary.docx"}
    assert loaded.path.suffix == ".docx" and loaded.path.parent == store.absolute()


def test_empty_docx_is_refused(store):
    message = refused(make_docx([]), store, name="blank.docx")
    assert "contains no text" in message and ACCEPTED in message


def test_docx_zip_bomb_is_refused_from_the_central_directory(store):
    bomb = deflated_zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": 300 * MB})
    assert len(bomb) < 1 * MB  # small on disk, 300 MB unpacked
    message = refused(bomb, store, name="bomb.docx")
    assert "unpacks to 300 MB; the limit is 200 MB" in message
    assert "zip bomb" in message


def test_docx_compression_ratio_is_limited(store):
    dense = deflated_zip({"word/document.xml": 8 * MB})
    message = refused(dense, store, name="dense.docx")
    assert "the .docx is compressed" in message and "the limit is 100:1" in message
    # the same file passes the ratio check under a looser limit (and then has no real text)
    message = refused(dense, store, name="dense.docx", limits=KnowledgeLimits(max_zip_ratio=1e6))
    assert "compressed" not in message


def test_docx_with_too_many_entries_is_refused(store):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", b"<x/>")
        for i in range(10_000):
            archive.writestr(f"m/{i}", b"")
    message = refused(buf.getvalue(), store, name="many.docx")
    assert "holds 10,001 files; the limit is 10,000" in message


def test_docx_whose_directory_understates_sizes_is_refused_without_inflating(store):
    """The directory says 1000 bytes (with a matching CRC); the data inflates to 64 MB."""
    data = bytearray(deflated_zip({"[Content_Types].xml": b"<Types/>",
                                   "word/document.xml": 64 * MB}))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        local = archive.getinfo("word/document.xml").header_offset
    central = data.rfind(b"PK\x01\x02")
    assert data[central + 46 : central + 46 + 17] == b"word/document.xml"
    crc = zlib.crc32(bytes(1000))
    struct.pack_into("<I", data, local + 14, crc)  # local header: CRC-32 ...
    struct.pack_into("<I", data, local + 22, 1000)  # ... and uncompressed size
    struct.pack_into("<I", data, central + 16, crc)
    struct.pack_into("<I", data, central + 24, 1000)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:  # zipfile believes the lie
        assert archive.getinfo("word/document.xml").file_size == 1000
        assert archive.open("word/document.xml").read(2000) == bytes(1000)

    message = refused(bytes(data), store, name="liar.docx")
    assert "inflates to more than the 1000 bytes its ZIP directory declares" in message


def test_zip_without_word_document_is_refused(store):
    data = deflated_zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<w/>"})
    message = refused(data, store, name="sheet.docx")
    assert "without word/document.xml, not a Word document" in message
    assert ACCEPTED in message


def test_random_bytes_named_docx_are_refused(store):
    message = refused(random_bytes(2048, seed=1), store, name="notes.docx")
    assert "not a Word .docx file (not a ZIP archive; found binary data)" in message


def test_truncated_docx_is_refused(store):
    data = make_docx(["some text"])
    message = refused(data[: len(data) // 2], store, name="half.docx")
    assert "not a valid Word .docx file" in message


def test_reader_failure_becomes_a_message_naming_the_kind(store):
    data = deflated_zip({"word/document.xml": b"<w:document><not closed"})
    message = refused(data, store, name="broken.docx")
    assert message.startswith("broken.docx: could not be read as Word (.docx) (ParseError: ")


# ---------------------------------------------------------------------------------------------
# Markdown, HTML, text


def test_markdown_sections_carry_their_header(store):
    md = (
        "Preface before any header.\n\n"
        "# Install\n\nRun the installer. Really!? Yes.\n\n"
        "# Usage\n\nOpen the [app](https://example.com) and ask.\n\n"
        "```\n# a comment, not a header\n```\n"
    )
    loaded = load_file(md.encode(), store_dir=store, original_name="guide.md")
    assert loaded.kind == "markdown"
    sections = [doc.metadata.get("section") for doc in loaded.documents]
    assert sections == [None, "Install", "Usage"]
    assert loaded.documents[0].text == "Preface before any header."
    assert loaded.documents[1].text.startswith("Install\n")
    assert "Run the installer. Really!? Yes." in loaded.documents[1].text  # "!?" kept
    assert "Open the app and ask." in loaded.documents[2].text  # link text, not the URL
    assert "# a comment, not a header" in loaded.documents[2].text
    assert loaded.path.suffix == ".md"


def test_chinese_markdown_round_trips(store):
    md = "# 指南\n\n知识库支持中文文档。\n\n## 安装\n\n运行安装程序。\n"
    loaded = load_file(md.encode("utf-8"), store_dir=store, original_name="指南.md")
    assert loaded.display_name == "指南.md"
    text = "\n".join(doc.text for doc in loaded.documents)
    assert "知识库支持中文文档。" in text and "运行安装程序。" in text
    assert any("指南" in doc.metadata.get("section", "") for doc in loaded.documents)


HTML = """<!DOCTYPE html>
<html><head><title>Team handbook</title>
<style>body { color: red; }</style>
<script>var leaked = "SCRIPT-IN-HEAD";</script></head>
<body>
<!-- COMMENT-TEXT -->
<h1>Welcome</h1><p>Read this <b>first</b>.</p>
<ul><li>alpha</li><li>beta</li></ul>
<script type="text/javascript">document.write("SCRIPT-IN-BODY");</script>
<noscript>NOSCRIPT-TEXT</noscript>
<p>Last line<br>after break</p>
</body></html>"""


@pytest.mark.parametrize("name", ["handbook.html", "handbook.htm", "handbook"])
def test_html_body_text_without_scripts_or_styles(store, name):
    loaded = load_file(HTML.encode(), store_dir=store, original_name=name)
    assert loaded.kind == "html"
    text = "\n".join(doc.text for doc in loaded.documents)
    for absent in ("SCRIPT-IN-HEAD", "SCRIPT-IN-BODY", "NOSCRIPT-TEXT", "COMMENT-TEXT",
                   "color: red", "document.write", "<p>", "DOCTYPE"):
        assert absent not in text, absent
    assert text.startswith("Team handbook\n")
    assert "Welcome" in text and "Read this first." in text
    assert "alpha\nbeta" in text  # list items are not glued together
    assert "Last line\nafter break" in text
    assert loaded.path.suffix == ".html"


def test_html_fragment_without_body_is_read(store):
    loaded = load_file(b"<p>Just a fragment</p><script>x()</script>", store_dir=store,
                       original_name="frag.html")
    assert [doc.text for doc in loaded.documents] == ["Just a fragment"]


def test_html_with_only_scripts_is_refused(store):
    message = refused(b"<html><body><script>alert(1)</script></body></html>", store,
                      name="empty.html")
    assert "the HTML file contains no text" in message


@pytest.mark.parametrize(
    "encoding, bom",
    [("gb18030", b""), ("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
     ("utf-16-be", b"\xfe\xff")],
)
def test_chinese_text_decodes_in_each_accepted_encoding(tmp_path, store, encoding, bom):
    text = "知识库测试：中文文本。\n第二行，含标点！"
    data = bom + text.encode(encoding)
    if encoding == "gb18030":
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")  # really not UTF-8
    src = write(tmp_path / "in" / "说明.txt", data)
    loaded = load_file(src, store_dir=store)
    assert loaded.kind == "text"
    assert [doc.text for doc in loaded.documents] == [text]
    assert loaded.documents[0].metadata == {"file_name": "说明.txt"}
    assert loaded.path.read_bytes() == data  # the original bytes are stored


def test_text_in_another_encoding_is_refused(store):
    # Latin-1 bytes that no accepted encoding reads as plausible text (0x81 is unassigned in
    # Windows-1252; as GB18030 they are rare CJK characters).
    message = refused("r\u00e9sum\u00e9 caf\u00e9 \x81".encode("latin-1"), store, name="cv.txt")
    assert "the text's encoding is not recognised" in message
    assert "save it as UTF-8" in message and "accepted encodings: UTF-8, UTF-16" in message


def test_utf8_with_a_broken_byte_is_not_misread_as_gb18030(store):
    data = ("Ünïcödé téxt " * 10).encode("utf-8") + b"\xff tail"
    message = refused(data, store, name="broken.txt")
    assert "the text is UTF-8 but has invalid bytes at offset" in message


def test_text_with_control_character_garbage_is_refused(store):
    message = refused(b"abc\x01\x02\x03\x04" * 100, store, name="log.txt")
    assert "not a text file" in message and "control characters" in message


@pytest.mark.parametrize("name", ["blank.txt", "blank.md"])
def test_whitespace_only_text_is_refused(store, name):
    message = refused(b"  \n\t\r\n  ", store, name=name)
    assert "contains no text" in message


def test_text_over_max_chars_is_refused_with_counts(store):
    data = b"x" * 1001
    message = refused(data, store, name="long.txt", limits=KnowledgeLimits(max_chars=1000))
    assert "has 1,001 characters of text; the limit is 1,000" in message
    loaded = load_file(data, store_dir=store, limits=KnowledgeLimits(max_chars=1001),
                       original_name="long.txt")
    assert loaded.text_chars == 1001


def test_pdf_text_over_max_chars_is_refused(store):
    data = make_pdf(["word " * 200, "word " * 200])
    message = refused(data, store, name="long.pdf", limits=KnowledgeLimits(max_chars=500))
    assert "characters of text; the limit is 500" in message


# ---------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("fmt, ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_images_are_validated_and_stored(store, fmt, ext):
    data = CAT_PNG.read_bytes() if fmt == "PNG" else image_bytes(fmt)
    width, height = Image.open(CAT_PNG).size
    loaded = load_file(data, store_dir=store, original_name=f"cat{ext}")
    assert loaded.kind == "image" and loaded.documents == [] and loaded.text_chars == 0
    assert (loaded.width, loaded.height) == (width, height)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.path == store.absolute() / f"{loaded.sha256}{ext}"
    assert loaded.path.read_bytes() == data
    assert loaded.pages is None


def test_truncated_image_is_refused_with_the_attachment_message(store):
    data = CAT_PNG.read_bytes()
    message = refused(data[: len(data) // 2], store, name="cat.png")
    assert "the PNG data is corrupt or truncated" in message


def test_image_over_max_pixels_is_refused(store):
    data = image_bytes("PNG", (200, 100))
    message = refused(data, store, name="wide.png", limits=KnowledgeLimits(max_pixels=10_000))
    assert "image is 200 x 100 pixels" in message and "the limit is 10,000 pixels" in message


def test_gif_is_refused_as_unsupported(store):
    message = refused(image_bytes("GIF", (20, 20)), store, name="anim.gif")
    assert "GIF images are not supported" in message and ACCEPTED in message


def test_text_renamed_png_is_refused(store):
    message = refused(b"just some notes, not a picture\n", store, name="photo.png")
    assert message == f"photo.png: not a PNG image (found text); accepted: {ACCEPTED}."


def test_executable_is_refused_as_binary(store):
    message = refused(b"MZ\x90\x00\x03\x00\x00\x00" + random_bytes(1000, seed=2), store,
                      name="setup.exe")
    assert message.startswith("setup.exe: not a supported file (found ")
    assert "accepted: " + ACCEPTED in message


# ---------------------------------------------------------------------------------------------
# size, names, storage


def test_size_is_checked_from_stat_before_reading(tmp_path, store, monkeypatch):
    big = tmp_path / "in" / "huge.txt"
    big.parent.mkdir()
    with open(big, "wb") as fh:
        fh.truncate(2 * 1024 * MB)  # sparse: 2 GB that would be slow to read
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)),
                                                             real_open(f, *a, **k))[1])
    message = refused(big, store, name="huge.txt")
    assert "file is 2 GB; the limit is 50 MB" in message
    assert str(big) not in opened


def test_file_over_small_max_file_bytes_is_refused(tmp_path, store):
    src = write(tmp_path / "in" / "notes.md", b"# Notes\n" + b"text " * 300)
    message = refused(src, store, name="notes.md", limits=KnowledgeLimits(max_file_bytes=1000))
    assert "file is 1.5 KB; the limit is 1000 bytes" in message


def test_empty_file_is_refused(tmp_path, store):
    src = write(tmp_path / "in" / "empty.pdf", b"")
    message = refused(src, store, name="empty.pdf")
    assert message == f"empty.pdf: file is empty (0 bytes); accepted: {ACCEPTED}."


def test_missing_file_and_directory_are_refused(tmp_path, store):
    assert "file not found" in refused(tmp_path / "nope.txt", store, name="nope.txt")
    assert "not a regular file" in refused(tmp_path, store, name="folder")


@pytest.mark.parametrize(
    "name, display",
    [
        ("../../etc/passwd.md", "passwd.md"),
        ("C:\\Users\\me\\notes.md", "notes.md"),
        ("bad\x00\x1b[31mname\u202e.md", "bad[31mname.md"),
        ("指南.md", "指南.md"),
        ("x" * 300 + ".md", "x" * 97 + ".md"),
    ],
)
def test_odd_names_are_sanitised_and_stored_by_hash(tmp_path, store, name, display):
    data = "# Title\n\nbody text 正文\n".encode()
    loaded = load_file(data, store_dir=store, original_name=name)
    assert loaded.display_name == display
    assert all(doc.metadata["file_name"] == display for doc in loaded.documents)
    assert loaded.kind == "markdown"
    assert store_files(store) == [store.absolute() / f"{loaded.sha256}.md"]
    assert loaded.path.resolve().parent == store.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "store"]


def test_same_bytes_twice_are_idempotent(tmp_path, store):
    data = make_pdf(["same content"])
    first = load_file(write(tmp_path / "in" / "a.pdf", data), store_dir=store)
    second = load_file(data, store_dir=store, original_name="b.pdf")
    assert first.sha256 == second.sha256
    assert first.path == second.path
    assert [d.id_ for d in first.documents] == [d.id_ for d in second.documents]
    assert first.documents[0].id_ == f"{first.sha256}-0"
    assert second.display_name == "b.pdf"
    assert store_files(store) == [first.path]  # one copy, no temp files left


def test_bytes_source_without_a_name_is_plain_text_called_upload(store):
    loaded = load_file(b"hello from memory", store_dir=store)
    assert loaded.display_name == "upload" and loaded.kind == "text"
    assert loaded.path.name == f"{loaded.sha256}.txt"


def test_content_beats_the_extension(store):
    loaded = load_file(make_pdf(["really a pdf"]), store_dir=store, original_name="notes.txt")
    assert loaded.kind == "pdf" and loaded.path.suffix == ".pdf"


@pytest.mark.parametrize(
    "head, name, kind",
    [
        (b"%PDF-1.7\n", "x.bin", "pdf"),
        (b"PK\x03\x04....word/document.xml", "x.zip", "docx"),
        (b"PK\x03\x04[Content_Types].xml", "x.docx", "docx"),
        (b"PK\x03\x04[Content_Types].xml", "x.zip", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "x.txt", "image"),
        (b"\xff\xd8\xff\xe0", "x", "image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "x.webp", "image"),
        (b"GIF89a\x01\x00", "x.gif", None),
        (b"# Title\n", "x.md", "markdown"),
        (b"# Title\n", "x.markdown", "markdown"),
        (b"<p>x</p>", "x.htm", "html"),
        (b"<!doctype html><p>x</p>", "page", "html"),
        (b"<!doctype html><p>x</p>", "page.txt", "text"),
        (b"plain words", "x.csv", "text"),
        ("中文".encode("gb18030"), "x.txt", "text"),
        (b"\xff\xfe" + "hi".encode("utf-16-le"), "x.txt", "text"),
        (b"plain words", "x.png", None),
        (b"plain words", "x.pdf", None),
        (b"\x00\x01\x02\x03", "x.txt", None),
        (b"", "x.txt", None),
    ],
)
def test_sniff_kind(head, name, kind):
    assert sniff_kind(head, name) == kind
    assert kind is None or kind in SUPPORTED_KINDS


def test_limits_must_be_positive():
    with pytest.raises(ConfigError, match="max_pages"):
        KnowledgeLimits(max_pages=0)


def test_loading_documents_imports_no_torch(tmp_path):
    pdf = write(tmp_path / "in" / "t.pdf", make_pdf(["no torch here"]))
    docx = write(tmp_path / "in" / "t.docx", make_docx(["no torch here either"]))
    code = (
        "import sys; from pathlib import Path; from mmchat.knowledge.loaders import load_file\n"
        f"store = Path({str(tmp_path / 's')!r})\n"
        f"for src in ({str(pdf)!r}, {str(docx)!r}): load_file(src, store_dir=store)\n"
        "load_file(b'<p>x</p>', store_dir=store, original_name='x.html')\n"
        "load_file(b'# x\\ny', store_dir=store, original_name='x.md')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
