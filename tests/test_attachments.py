"""Tests for `mmchat.attachments`: content sniffing, limits, bombs, safe names, storage.

All inputs are real files written to `tmp_path` (images made with PIL, the cat photo from
scikit-image); nothing is mocked except spies that record whether a file was opened/decoded.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import os
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from mmchat.attachments import (
    Attachment,
    ingest_image,
    ingest_upload,
    load_attachment,
    safe_display_name,
)
from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload, UserFacingError

LIMITS = UploadLimits()
ACCEPTED = "PNG, JPEG, WEBP, GIF, BMP"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def rejected(source, store: Path, *, name: str, limits: UploadLimits = LIMITS) -> str:
    """Ingest `source`, expect an InvalidUpload naming the file; return its message."""
    with pytest.raises(InvalidUpload) as info:
        ingest_upload(source, store_dir=store, limits=limits, original_name=name)
    message = str(info.value)
    assert isinstance(info.value, UserFacingError)
    assert message.startswith(f"{safe_display_name(name)}: "), message
    # nothing is stored for a rejected upload
    assert not store.exists() or list(store.iterdir()) == []
    return message


# ---------------------------------------------------------------------------------------------
# accepted images


@pytest.mark.parametrize(
    "fmt, ext, stored_ext",
    [("PNG", "png", ".png"), ("JPEG", "jpg", ".jpg"), ("WEBP", "webp", ".webp"),
     ("BMP", "bmp", ".bmp"), ("GIF", "gif", ".gif")],
)
def test_valid_images_are_accepted_with_format_size_and_hash(tmp_path, store, cat_image, fmt, ext, stored_ext):
    img = cat_image.resize((120, 80))
    data = encode(img, fmt)
    src = write(tmp_path / "src" / f"cat.{ext}", data)

    att = ingest_upload(src, store_dir=store, limits=LIMITS)

    assert isinstance(att, Attachment)
    assert att.format == fmt
    assert (att.width, att.height) == (120, 80)
    assert att.size_bytes == len(data)
    assert att.sha256 == hashlib.sha256(data).hexdigest()
    assert att.display_name == f"cat.{ext}"
    assert att.path == store.absolute() / f"{att.sha256}{stored_ext}"
    assert att.path.read_bytes() == data  # the original bytes, not a re-encode
    rgb = att.open_image()
    assert rgb.mode == "RGB" and rgb.size == (120, 80)


def test_real_photo_round_trips_pixels(tmp_path, store, cat_image):
    data = encode(cat_image, "PNG")
    att = ingest_upload(data, store_dir=store, limits=LIMITS, original_name="chelsea.png")
    assert (att.width, att.height) == cat_image.size == (451, 300)
    assert list(att.open_image().getdata()) == list(cat_image.convert("RGB").getdata())


def test_jpeg_named_png_is_accepted_as_jpeg(tmp_path, store, cat_image):
    src = write(tmp_path / "src" / "photo.png", encode(cat_image, "JPEG", quality=80))
    att = ingest_upload(src, store_dir=store, limits=LIMITS)
    assert att.format == "JPEG"
    assert att.path.suffix == ".jpg"
    assert att.display_name == "photo.png"


def test_multi_picture_jpeg_mpo_is_reported_as_jpeg(store, cat_image):
    data = encode(cat_image, "MPO", save_all=True, append_images=[cat_image.rotate(90)])
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what Pillow itself calls it
    att = ingest_upload(data, store_dir=store, limits=LIMITS, original_name="camera.jpg")
    assert att.format == "JPEG" and att.path.suffix == ".jpg"


def test_bytes_source_without_name_is_called_upload(store):
    att = ingest_upload(encode(Image.new("RGB", (5, 5)), "PNG"), store_dir=store, limits=LIMITS)
    assert att.display_name == "upload"


# ---------------------------------------------------------------------------------------------
# rejected by content


def test_pdf_named_png_is_rejected_naming_pdf_and_accepted_formats(tmp_path, store):
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    src = write(tmp_path / "src" / "notes.png", pdf)
    message = rejected(src, store, name="notes.png")
    assert "PDF" in message
    assert ACCEPTED in message


def test_text_file_is_rejected(tmp_path, store):
    src = write(tmp_path / "src" / "readme.jpg", "just some notes\nand a second line\n".encode())
    message = rejected(src, store, name="readme.jpg")
    assert "not an image" in message and "text" in message and ACCEPTED in message


def test_zip_is_rejected_as_zip(tmp_path, store):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    message = rejected(buf.getvalue(), store, name="archive.png")
    assert "ZIP" in message and ACCEPTED in message


def test_image_format_not_in_accepted_list_is_rejected(store, cat_image):
    message = rejected(encode(cat_image, "TIFF"), store, name="scan.tif")
    assert "TIFF" in message and "not accepted" in message and ACCEPTED in message


def test_formats_follow_the_limits(store, cat_image):
    png_only = UploadLimits(formats=("PNG",))
    message = rejected(encode(cat_image, "JPEG"), store, name="cat.jpg", limits=png_only)
    assert "JPEG" in message and message.endswith("accepted: PNG")
    assert ingest_upload(encode(cat_image, "PNG"), store_dir=store, limits=png_only).format == "PNG"


def test_unknown_binary_is_rejected(store):
    message = rejected(bytes(range(256)) * 4, store, name="blob.bin")
    assert "not a recognised image" in message and ACCEPTED in message


def test_zero_byte_file_is_rejected(tmp_path, store):
    src = write(tmp_path / "src" / "empty.png", b"")
    message = rejected(src, store, name="empty.png")
    assert "empty" in message and "0 bytes" in message


def test_truncated_jpeg_is_rejected(tmp_path, store, cat_image):
    data = encode(cat_image, "JPEG", quality=90)
    src = write(tmp_path / "src" / "half.jpg", data[: len(data) // 2])
    # Pillow reads the header of the half file happily; only a full decode finds the problem.
    assert Image.open(src).size == cat_image.size
    message = rejected(src, store, name="half.jpg")
    assert "JPEG" in message and "truncated" in message


def test_truncated_png_is_rejected(store, cat_image):
    data = encode(cat_image, "PNG")
    message = rejected(data[: len(data) - 2000], store, name="cut.png")
    assert "PNG" in message and "truncated" in message


def test_random_bytes_with_png_signature_are_rejected(store):
    data = b"\x89PNG\r\n\x1a\n" + bytes((i * 7919 + 13) % 256 for i in range(4000))
    message = rejected(data, store, name="fake.png")
    assert "PNG" in message and "corrupt" in message


# ---------------------------------------------------------------------------------------------
# size limits


def test_over_max_bytes_is_rejected_from_stat_without_opening(tmp_path, store, cat_image, monkeypatch):
    data = encode(cat_image, "PNG")
    src = write(tmp_path / "src" / "big.png", data)
    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    message = rejected(src, store, name="big.png", limits=UploadLimits(max_bytes=10_000))
    monkeypatch.undo()

    assert str(src) not in opened
    assert f"{len(data) / 1024:.1f} KB" in message  # e.g. "file is 254.3 KB"
    assert "the limit is 9.8 KB" in message


def test_huge_sparse_file_is_rejected_quickly(tmp_path, store):
    src = tmp_path / "src" / "huge.png"
    src.parent.mkdir()
    with open(src, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(8 * 1024**3)  # 8 GB, sparse: reading it would take long and a lot of memory
    start = time.monotonic()
    message = rejected(src, store, name="huge.png")
    assert time.monotonic() - start < 2
    assert message == "huge.png: file is 8 GB; the limit is 20 MB."


def test_size_message_never_shows_equal_rounded_numbers(store):
    limits = UploadLimits(max_bytes=20 * 1024 * 1024)
    message = rejected(b"x" * (limits.max_bytes + 1), store, name="edge.png", limits=limits)
    assert "20,971,521 bytes" in message and "20,971,520 bytes" in message


def test_bytes_over_limit_rejected(store, cat_image):
    data = encode(cat_image, "PNG")
    message = rejected(data, store, name="x.png", limits=UploadLimits(max_bytes=len(data) - 1))
    assert "the limit is" in message
    assert ingest_upload(data, store_dir=store, limits=UploadLimits(max_bytes=len(data))).size_bytes == len(data)


# ---------------------------------------------------------------------------------------------
# pixel limits and decompression bombs


@pytest.fixture
def decode_spy(monkeypatch):
    """Records every full decode (`ImageFile.load`) so tests can assert none happened."""
    calls: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_pixels_over_limit_rejected_from_header_without_decoding(store, decode_spy):
    data = encode(Image.new("1", (3000, 3000)), "PNG")  # 9 Mpx, ~1 KB of PNG
    assert len(data) < 20_000
    decode_spy.clear()
    message = rejected(data, store, name="wide.png", limits=UploadLimits(max_pixels=1_000_000))
    assert decode_spy == []
    assert "3000 x 3000 pixels" in message and "the limit is 1 megapixels" in message


def test_decompression_bomb_with_small_limit(store, decode_spy):
    data = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 Mpx in ~50 KB
    assert len(data) < 100_000
    decode_spy.clear()
    message = rejected(data, store, name="bomb.png", limits=UploadLimits(max_pixels=10_000))
    assert decode_spy == []
    assert "400 megapixels" in message and "10,000 pixels" in message


def test_decompression_bomb_with_default_limits(store, decode_spy):
    data = encode(Image.new("1", (10000, 10000)), "PNG")  # 100 Mpx > Pillow's own 89 Mpx
    decode_spy.clear()
    message = rejected(data, store, name="bomb.png")
    assert decode_spy == []
    assert "100 megapixels" in message and "the limit is 40 megapixels" in message


def test_pillow_bomb_guard_applies_even_above_our_limit(store, decode_spy):
    # Our limit is higher than Pillow's MAX_IMAGE_PIXELS: Pillow's guard still refuses it.
    # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only *warns*; the warning must become the
    # rejection inside the call, and must not leak out as a warning.
    limits = UploadLimits(max_pixels=10**9)
    data = encode(Image.new("1", (10000, 10000)), "PNG")
    assert Image.MAX_IMAGE_PIXELS < 10000 * 10000 < 2 * Image.MAX_IMAGE_PIXELS
    decode_spy.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = rejected(data, store, name="bomb.png", limits=limits)
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    assert decode_spy == []
    assert "100 megapixels" in message and "decompression bomb" in message


def test_ingest_image_checks_pixels_before_encoding(store):
    with pytest.raises(InvalidUpload) as info:
        ingest_image(Image.new("1", (5000, 5000)), store_dir=store, limits=UploadLimits(max_pixels=100),
                     name="example.png")
    assert str(info.value).startswith("example.png: image is 5000 x 5000 pixels")
    assert not store.exists()


# ---------------------------------------------------------------------------------------------
# names and storage


ODD_NAMES = ["../../evil.png", "a\nb.png", "..\\..\\x.png", "кошка 猫 🐱.png", "my photo (1).png", ".hidden.png"]
EXPECTED_DISPLAY = ["evil.png", "ab.png", "x.png", "кошка 猫 🐱.png", "my photo (1).png", "hidden.png"]


@pytest.mark.parametrize("name, expected", list(zip(ODD_NAMES, EXPECTED_DISPLAY)))
def test_odd_names_as_original_name_stay_inside_store(tmp_path, store, name, expected):
    data = encode(Image.new("RGB", (7, 7), "blue"), "PNG")
    before = tree(tmp_path)
    att = ingest_upload(data, store_dir=store, limits=LIMITS, original_name=name)

    assert att.display_name == expected
    assert att.path.resolve().parent == store.resolve()
    assert att.path.name == f"{att.sha256}.png"
    after = {p for p in tree(tmp_path) if not p.startswith("store")}
    assert after == before
    assert tree(store) == {att.path.name}


@pytest.mark.parametrize("name, expected", list(zip(ODD_NAMES, EXPECTED_DISPLAY)))
def test_odd_source_file_names_are_fine(tmp_path, store, name, expected):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    # On POSIX, "/" cannot be in a file name: use the last component (still has "..\\" etc.)
    fs_name = name.split("/")[-1]
    src = write(src_dir / fs_name, encode(Image.new("RGB", (9, 4), "green"), "PNG"))
    before = tree(tmp_path)

    att = ingest_upload(src, store_dir=store, limits=LIMITS)

    assert att.display_name == safe_display_name(fs_name)
    assert "/" not in att.display_name and "\\" not in att.display_name and "\n" not in att.display_name
    assert att.path.resolve().is_relative_to(store.resolve())
    assert {p for p in tree(tmp_path) if not p.startswith("store")} == before
    assert tree(store) == {att.path.name}


def test_path_like_traversal_source_is_read_not_written(tmp_path, store):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write(tmp_path / "evil.png", encode(Image.new("RGB", (3, 3)), "PNG"))
    src = tmp_path / "a" / "b" / ".." / ".." / "evil.png"
    att = ingest_upload(src, store_dir=store, limits=LIMITS)
    assert att.display_name == "evil.png"
    assert att.path.parent == store.absolute()


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, "upload"),
        ("", "upload"),
        ("...", "upload"),
        ("/", "upload"),
        ("C:\\Users\\me\\Pictures\\cat.jpg", "cat.jpg"),
        ("/etc/passwd", "passwd"),
        ("tab\there.png", "tabhere.png"),
        ("bell\x07\x00.png", "bell.png"),
        ("spoof\u202egnp.exe", "spoofgnp.exe"),
        ("  ..  .png", "png"),
    ],
)
def test_safe_display_name(raw, expected):
    assert safe_display_name(raw) == expected


def test_safe_display_name_limits_length_keeping_extension():
    name = safe_display_name("a" * 300 + ".jpeg")
    assert len(name) == 100 and name.endswith(".jpeg") and name.startswith("aaaa")
    no_ext = safe_display_name("b" * 300)
    assert no_ext == "b" * 100


def test_identical_content_is_stored_once(tmp_path, store, cat_image):
    data = encode(cat_image, "WEBP")
    a = ingest_upload(write(tmp_path / "one.webp", data), store_dir=store, limits=LIMITS)
    mtime = a.path.stat().st_mtime_ns
    b = ingest_upload(data, store_dir=store, limits=LIMITS, original_name="two.webp")
    assert a.path == b.path and a.sha256 == b.sha256
    assert (a.display_name, b.display_name) == ("one.webp", "two.webp")
    assert tree(store) == {a.path.name}  # one file, no temp files left behind
    assert a.path.stat().st_mtime_ns == mtime  # not rewritten
    c = ingest_upload(encode(cat_image.rotate(180), "WEBP"), store_dir=store, limits=LIMITS)
    assert c.path != a.path and len(tree(store)) == 2


def test_store_dir_is_created_with_parents(tmp_path):
    store = tmp_path / "deep" / "er" / "uploads"
    att = ingest_upload(encode(Image.new("L", (2, 2)), "PNG"), store_dir=store, limits=LIMITS)
    assert att.path.is_file() and att.path.parent == store.absolute()


def test_damaged_partial_copy_is_replaced(store, cat_image):
    data = encode(cat_image, "PNG")
    att = ingest_upload(data, store_dir=store, limits=LIMITS)
    att.path.write_bytes(data[:100])  # e.g. left by a crash of an older version
    again = ingest_upload(data, store_dir=store, limits=LIMITS)
    assert again.path.read_bytes() == data


# ---------------------------------------------------------------------------------------------
# load_attachment


def test_load_attachment_round_trip(store, cat_image):
    att = ingest_upload(encode(cat_image, "JPEG"), store_dir=store, limits=LIMITS, original_name="cat.jpg")
    loaded = load_attachment(store, att.sha256, display_name="cat.jpg")
    assert loaded == att
    assert dataclasses.replace(load_attachment(store, att.sha256), display_name="cat.jpg") == att
    assert loaded.open_image().size == cat_image.size


def test_load_attachment_missing_hash(store):
    store.mkdir()
    missing = "0" * 64
    with pytest.raises(InvalidUpload) as info:
        load_attachment(store, missing, display_name="old.png")
    assert str(info.value).startswith("old.png: ") and missing in str(info.value)
    assert "upload the image again" in str(info.value)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "abc", "*" * 64, "g" * 64])
def test_load_attachment_rejects_malformed_ids(store, bad):
    with pytest.raises(InvalidUpload, match="not an attachment id"):
        load_attachment(store, bad)


def test_load_attachment_detects_tampered_copy(store, cat_image):
    att = ingest_upload(encode(cat_image, "PNG"), store_dir=store, limits=LIMITS)
    att.path.write_bytes(encode(cat_image.rotate(90), "PNG"))
    with pytest.raises(InvalidUpload, match="damaged"):
        load_attachment(store, att.sha256)


# ---------------------------------------------------------------------------------------------
# open_image


def test_animated_gif_uses_first_frame(store):
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    att = ingest_upload(data, store_dir=store, limits=LIMITS, original_name="anim.gif")
    assert att.format == "GIF"
    img = att.open_image()
    assert img.mode == "RGB" and img.getpixel((8, 8)) == (255, 0, 0)


def test_rgba_is_composited_to_rgb(store):
    img = Image.new("RGBA", (4, 2), (0, 0, 255, 255))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent
    att = ingest_upload(encode(img, "PNG"), store_dir=store, limits=LIMITS)
    rgb = att.open_image()
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (0, 0, 255)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)  # transparency shows as white, not red


@pytest.mark.parametrize("mode", ["P", "L", "1", "LA", "I;16"])
def test_other_modes_become_rgb(store, mode):
    img = Image.new("RGB", (8, 8), (200, 30, 30)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.new("I;16", (8, 8), 40000)
    att = ingest_image(img, store_dir=store, limits=LIMITS, name=f"{mode}.png")
    assert att.format == "PNG"
    out = att.open_image()
    assert out.mode == "RGB" and out.size == (8, 8)


def test_cmyk_jpeg_becomes_rgb(store, cat_image):
    att = ingest_upload(encode(cat_image.convert("CMYK"), "JPEG"), store_dir=store, limits=LIMITS)
    out = att.open_image()
    assert out.mode == "RGB"
    r, g, b = out.getpixel((225, 150))
    assert max(r, g, b) > 30  # not garbage black


def test_exif_orientation_is_applied(store):
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(img, "JPEG", exif=exif, quality=95)
    att = ingest_upload(data, store_dir=store, limits=LIMITS, original_name="phone.jpg")
    assert (att.width, att.height) == (20, 40)
    out = att.open_image()
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 3))  # the left band is now at the top
    assert r > 200 and g < 60 and b < 60


def test_open_image_detects_changed_copy(store, cat_image):
    att = ingest_upload(encode(cat_image, "PNG"), store_dir=store, limits=LIMITS, original_name="c.png")
    att.path.write_bytes(encode(Image.new("RGB", (10, 10)), "PNG"))
    with pytest.raises(InvalidUpload, match=r"^c\.png: .*changed"):
        att.open_image()
    att.path.unlink()
    with pytest.raises(InvalidUpload, match=r"^c\.png: .*cannot be read"):
        att.open_image()


def test_ingest_image_from_memory(store, coffee_image):
    att = ingest_image(coffee_image, store_dir=store, limits=LIMITS, name="examples/coffee.jpg")
    assert att.format == "PNG" and att.path.suffix == ".png"
    assert att.display_name == "coffee.jpg"
    assert (att.width, att.height) == coffee_image.size
    assert list(att.open_image().getdata())[:50] == list(coffee_image.convert("RGB").getdata())[:50]
    again = ingest_image(coffee_image, store_dir=store, limits=LIMITS)
    assert again.path == att.path


def test_ingest_image_respects_byte_limit(store, cat_image):
    with pytest.raises(InvalidUpload, match=r"^big\.png: file is .*; the limit is 1000 bytes\."):
        ingest_image(cat_image, store_dir=store, limits=UploadLimits(max_bytes=1000), name="big.png")


def test_directory_or_missing_source_is_rejected(tmp_path, store):
    folder = tmp_path / "src" / "folder.png"
    folder.mkdir(parents=True)
    assert "not a regular file" in rejected(folder, store, name="folder.png")
    assert "file not found" in rejected(tmp_path / "gone.png", store, name="gone.png")
