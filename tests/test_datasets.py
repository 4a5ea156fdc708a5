"""Dataset files for the Fine-tune tab: reading every format, reporting every bad row, refusing
bad files fast, and rendering rows exactly as the model sees them.

Real parts: real files and zips in a temp folder, the real photos (cat, coffee) validated by
the chat's own upload checks, a chat export written by the real `ChatSession.export_zip`, the
real SmolLM2 tokenizer and chat template, the real EfficientNet image pathway, the real
collator. Nothing is mocked except the chat's model (the export needs no answers generated).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mmchat.config import GenerationDefaults, UploadLimits  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.datasets import (  # noqa: E402
    BUILTIN,
    BadRow,
    DatasetLimits,
    bad_rows_table,
    builtin_dataset,
    check_lengths,
    is_caption,
    mix,
    preview_html,
    read_dataset,
    report_markdown,
    split,
)
from mmchat.training.examples import IGNORE, Example, Renderer, dataset_digest, supervised_spans  # noqa: E402

SYSTEM = GenerationDefaults().system_prompt


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir):
    from mmchat.backends.builtin import load_smollm2_tokenizer

    return load_smollm2_tokenizer(model_cache_dir)


@pytest.fixture
def photos(tmp_path, cat_image, coffee_image) -> Path:
    """photos/cat.jpg and photos/coffee.png beside where the datasets are written."""
    folder = tmp_path / "data" / "photos"
    folder.mkdir(parents=True)
    cat_image.save(folder / "cat.jpg", quality=85)
    coffee_image.resize((200, 150)).save(folder / "coffee.png")
    return folder


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ bad rows


def test_every_bad_row_is_reported_with_its_line_and_reason(tmp_path, photos):
    data = photos.parent
    (photos / "notes.png").write_text("these are my notes, not a picture")
    (photos / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    good = {"question": "What animal is this?", "answer": "A cat.", "image": "photos/cat.jpg"}
    path = jsonl(data / "broken.jsonl", [
        good,                                                                       # 1
        '{"question": "What is this?", "answer": ',                                 # 2 not JSON
        '["a", "list"]',                                                            # 3 not an object
        {"question": "Where?"},                                                     # 4 missing answer
        {"question": "  ", "answer": "Here."},                                      # 5 empty question
        {"question": "Why?", "answer": "Because.", "score": 5},                     # 6 unknown field
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]},  # 7 bad role
        {"question": "What is it?", "answer": "A dog.", "image": "photos/dog.jpg"},  # 8 image missing
        {"question": "What is it?", "answer": "Notes.", "image": "photos/notes.png"},  # 9 not an image
        {"instruction": "<image> and <image>: which is bigger?", "output": "The cat.",
         "images": ["photos/cat.jpg"]},                                             # 10 markers != images
        {"messages": [{"role": "user", "content": "Anyone there?"}]},               # 11 no assistant turn
        {"question": "Long?", "answer": "x" * 3000},                                # 12 row too big
        good,                                                                       # 13 duplicate of line 1
        {"question": "What is it?", "answer": "Big.", "image": "photos/bomb.png"},  # 14 image bomb
        {"question": "What is it?", "answer": "A cat.", "image_label": "tabby"},    # 15 not an ImageNet class
        {"instruction": "Say hi.", "output": ""},                                   # 16 empty output
        "",                                                                         # 17 blank: skipped
        {"question": "What is it?", "answer": "Up.", "image": "../secret.png"},     # 18 climbing image path
        {"instruction": "Say hello.", "output": "Hello."},                          # 19 fine
    ])
    work = tmp_path / "work"
    started = time.perf_counter()
    report = read_dataset(path, work, DatasetLimits(max_row_bytes=2000))
    assert time.perf_counter() - started < 1.0
    expected = [
        ("line 2", r"^not JSON \(.*column \d+\); accepted: one JSON object per line$"),
        ("line 3", r"^a JSON list, not an object; accepted: \{\"question\", \"answer\""),
        ("line 4", r"^answer is missing; accepted: a non-empty string$"),
        ("line 5", r"^question is empty; accepted: a non-empty string$"),
        ("line 6", r"^unknown field\(s\) \['score'\] for a question/answer row; accepted: answer, expected, image,"),
        ("line 7 messages[1]", r"^role 'bot' is not valid; accepted: system, user, assistant$"),
        ("line 8 image", r"^image 'photos/dog.jpg' is not found beside the dataset; accepted: a path relative"),
        ("line 9 image", r"^notes.png: not an image \(detected text\); accepted: PNG, JPEG, WEBP, GIF, BMP$"),
        ("line 10", r"^the text has 2 <image> marker\(s\) but the row names 1 image\(s\); accepted: as many markers"),
        ("line 11", r"^no assistant turn; accepted: a user turn followed by an assistant answer$"),
        ("line 12", r"^the row is 3(\.0)? KB, over the limit of 2(\.0)? KB per row$"),
        ("line 13", r"^exact duplicate of line 1$"),
        ("line 14 image", r"^bomb.png: image is 10000 megapixels; the limit is 40 megapixels \(refused as a decompression bomb\)\.$"),
        ("line 15", r"^image_label 'tabby' is not an ImageNet class name; did you mean one of \['tabby cat'"),
        ("line 16", r"^output is empty; accepted: a non-empty string$"),
        ("line 18 image", r"^image '../secret.png' is not a plain relative path; accepted: a path relative to the "),
    ]
    assert [b.where for b in report.bad] == [where for where, _ in expected]
    for bad, (where, pattern) in zip(report.bad, expected):
        assert re.search(pattern, bad.reason), (where, bad.reason)
    assert report.lines == ["line 1", "line 19"]
    assert report.summary() == {"source": "broken.jsonl", "usable": 2, "bad": 16, "skipped": 0,
                                "formats": {"question/answer": 1, "alpaca": 1}, "kinds": {"vqa": 1, "text": 1}}
    assert bad_rows_table(report)[5] == ["line 7 messages[1]", report.bad[5].reason]
    summary = report_markdown(report)
    assert "**broken.jsonl**: 2 usable rows, 16 bad rows" in summary and "train on the 2 usable rows" in summary
    # Only the one good photo was copied, under its content hash, inside the work folder.
    assert [p.parent for p in work.rglob("*.*")] == [work / "images"]
    assert report.examples[0].images == (str(next(work.rglob("*.jpg"))),)


# ------------------------------------------------------------------------------ formats

QUESTIONS = [("What animal is this?", "A cat.", "photos/cat.jpg"), ("What is in the cup?", "Coffee.", "photos/coffee.png"),
             ("Say hello.", "Hello there.", None)]


def chat_export(tmp_path: Path, photos: Path) -> Path:
    """The three exchanges as the real chat exports them, plus a stopped answer and a note."""
    from mmchat.session import ChatMessage, ChatSession
    from fakes import EchoBackend

    session = ChatSession(EchoBackend(), None, tmp_path / "uploads")
    history = []
    for question, answer, image in QUESTIONS:
        ids = [session.attach(str(photos.parent / image), name=Path(image).name).attachment.sha256] if image else []
        history += [ChatMessage("user", question, ids), ChatMessage("note", "(shown to the person only)"),
                    ChatMessage("assistant", answer, stats={"finish_reason": "stop", "output_tokens": 3})]
    history += [ChatMessage("user", "Tell me a long story."),
                ChatMessage("assistant", "Once upon a", stats={"finish_reason": "cancelled"})]
    session.history = history
    return session.export_zip(tmp_path / "mmchat-chat.zip")


def test_the_same_examples_in_every_format_read_the_same(tmp_path, photos):
    data = photos.parent
    qa = jsonl(data / "qa.jsonl", [{"question": q, "answer": a, **({"image": i} if i else {})} for q, a, i in QUESTIONS])
    alpaca = data / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"<image>\n{q}" if i else q, "input": "", "output": a,
                                   **({"images": [i]} if i else {})} for q, a, i in QUESTIONS], indent=2))
    messages = jsonl(data / "messages.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}] if i else q},
                      {"role": "assistant", "content": a}], **({"images": [i]} if i else {})}
        for q, a, i in QUESTIONS])
    sharegpt = jsonl(data / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **({"images": [i]} if i else {})}
        for q, a, i in QUESTIONS])
    zipped = tmp_path / "with-images.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(qa, "set/data.jsonl")
        archive.write(photos / "cat.jpg", "set/photos/cat.jpg")
        archive.write(photos / "coffee.png", "set/photos/coffee.png")
        archive.writestr("__MACOSX/set/._data.jsonl", b"\x00\x05")
    export = chat_export(tmp_path, photos)

    work = tmp_path / "work"
    before = files_under(tmp_path)
    reports = {path.name: read_dataset(path, work) for path in (qa, alpaca, messages, sharegpt, zipped, export)}
    assert {p for p in files_under(tmp_path) - before if work not in p.parents and p != work} == set()

    expected = reports["qa.jsonl"].examples
    assert [(e.question, e.answer, len(e.images)) for e in expected] == [(q, a, int(bool(i))) for q, a, i in QUESTIONS]
    assert all(Path(p).parent == work / "images" for e in expected for p in e.images)
    for name, report in reports.items():
        assert report.examples == expected, name
        assert not report.bad, (name, report.bad)
    starts = [f"line {n}" for n, line in enumerate(alpaca.read_text().splitlines(), 1) if line.strip() == "{"]
    assert reports["alpaca.json"].lines == starts and len(starts) == 3  # where each item of the list starts
    assert {n: r.formats for n, r in reports.items()} == {
        "qa.jsonl": {"question/answer": 3}, "alpaca.json": {"alpaca": 3}, "messages.jsonl": {"messages": 3},
        "sharegpt.jsonl": {"messages": 3}, "with-images.zip": {"question/answer": 3}, "mmchat-chat.zip": {"chat export": 3}}
    assert reports["messages.jsonl"].notes == [
        "3 row(s) carry their own system message; training uses the chat's system prompt instead (what chat sends)"]
    chat = reports["mmchat-chat.zip"]
    assert chat.lines == ["chat.json messages[2]", "chat.json messages[5]", "chat.json messages[8]"]
    assert chat.skipped == [BadRow("chat.json messages[10]", "left out: it was stopped before it ended (kept answers only)")]
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(export) as archive:
        archive.extractall(unpacked)
    assert read_dataset(unpacked / "chat.json", work).examples == expected  # the export's folder on disk
    everything = read_dataset(export, work, kept_only=False)
    assert [e.answer for e in everything.examples][-1] == "Once upon a" and not everything.skipped
    assert expected[0].extra["image_names"] == ["cat.jpg"]
    # The card's digest does not depend on where the copies lie.
    again = read_dataset(qa, tmp_path / "elsewhere")
    assert again.examples != expected and dataset_digest(again.examples) == dataset_digest(expected)


def test_examples_round_trip_through_json_and_old_digests_stay(tmp_path):
    old = Example("What colour?", "Red.", (("tabby cat", 0.6),), "photo", "red")
    assert set(old.to_json()) == {"question", "answer", "image_labels", "kind", "expected"}
    import hashlib

    line = json.dumps({"question": "What colour?", "answer": "Red.", "image_labels": [["tabby cat", 0.6]],
                       "kind": "photo", "expected": "red"}, sort_keys=True).encode() + b"\n"
    assert dataset_digest([old]) == hashlib.sha256(line).hexdigest()  # what cards recorded before turns/images
    multi = Example("Sure?", "Yes.", turns=(("user", "<image>\nColour?"), ("assistant", "Red."), ("user", "Sure?"),
                                            ("assistant", "Yes.")), images=("/x/ab.png",))
    for example in (old, multi):
        assert Example.from_json(json.loads(json.dumps(example.to_json()))) == example


# ------------------------------------------------------------------------------ rendering


def test_multi_turn_labels_cover_exactly_the_assistant_turns(tokenizer):
    from mmchat.backends.offline import flatten
    from mmchat.prompt import Turn, render_messages

    turns = (("user", "My kite is red. Remember it."), ("assistant", "Noted: red."),
             ("user", "What colour is my kite?"), ("assistant", "Red."))
    example = Example("What colour is my kite?", "Red.", turns=turns)
    encoded = Renderer("offline", tokenizer, SYSTEM).encode(example)
    labelled = [tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])]
    runs = [text for text, counted in supervised_spans(tokenizer, encoded) if counted]
    assert runs == ["Noted: red.<|im_end|>", "Red.<|im_end|>"]
    assert labelled == ["Noted: red.<|im_end|>Red.<|im_end|>"]
    # The tokens are the whole conversation as chat renders it, up to the last answer's end.
    messages, _ = render_messages(SYSTEM, [Turn(role, text) for role, text in turns])
    whole = tokenizer.apply_chat_template(flatten(messages, []), return_dict=True)["input_ids"]
    assert list(whole[: len(encoded.input_ids)]) == encoded.input_ids
    assert tokenizer.decode(whole[len(encoded.input_ids):]).strip() == ""
    # A single turn is what it always was: the prompt chat sends, then the answer.
    single = Renderer("offline", tokenizer, SYSTEM).encode(Example("What colour is my kite?", "Red."))
    assert single.input_ids[: single.prompt_length] == Renderer("offline", tokenizer, SYSTEM).prompt_ids(
        Example("What colour is my kite?", "Red."))
    with pytest.raises(UserFacingError, match=r"an example is \d+ tokens long, more than max_length 20"):
        Renderer("offline", tokenizer, SYSTEM, max_length=20).encode(example)
    assert Renderer("offline", tokenizer, SYSTEM).token_count(example) == len(encoded.input_ids)


def test_supervised_spans_and_the_preview_equal_the_collators_labels(tokenizer):
    from mmchat.training.collate import collate

    renderer = Renderer("offline", tokenizer, SYSTEM)
    examples = [Example("What is 2+2?", "<b>4</b> & done"),
                Example("Colour?", "Red.", (("tabby cat", 0.7), ("lynx", 0.1))),
                Example("Sure?", "Yes.", turns=(("user", "Hi"), ("assistant", "Hello!"), ("user", "Sure?"),
                                                ("assistant", "Yes.")))]
    encoded = [renderer.encode(e) for e in examples]
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    for row, item in enumerate(encoded):
        labels = batch["labels"][row].tolist()
        ids = batch["input_ids"][row].tolist()
        runs, current = [], []
        for position, label in enumerate(labels):
            if label != IGNORE:
                current.append(ids[position])
            elif current:
                runs.append(tokenizer.decode(current))
                current = []
        runs += [tokenizer.decode(current)] if current else []
        spans = supervised_spans(tokenizer, item)
        assert [text for text, counted in spans if counted] == runs
        assert "".join(text for text, _ in spans) == tokenizer.decode(item.input_ids)
    page = preview_html(renderer, examples[0], encoded[0])
    assert '<mark class="mmchat-supervised">&lt;b&gt;4&lt;/b&gt; &amp; done&lt;|im_end|&gt;</mark>' in page
    assert "&lt;|im_start|&gt;assistant\n<mark" in page and "<pre" in page
    assert "Image 1: an invented photo of tabby cat" in preview_html(renderer, examples[1], encoded[1])
    assert page.count("mmchat-supervised") == 1
    assert preview_html(renderer, examples[2], encoded[2]).count('<mark class="mmchat-supervised">') == 2


def test_real_images_reach_the_model_as_chat_sends_them(tmp_path, photos, tokenizer, model_cache_dir):
    from mmchat.attachments import ingest_upload
    from mmchat.backends.base import BackendInfo
    from mmchat.backends.offline import ClassifierLabelPathway, OfflineBackend
    from mmchat.prompt import Turn, render_messages
    from mmchat.training.examples import image_describer
    from mmchat.vision.imagenet import shared_classifier

    path = jsonl(photos.parent / "two.jsonl", [
        {"question": "Which is the drink, <image> or <image>?", "answer": "The second.",
         "images": ["photos/cat.jpg", "photos/coffee.png"]}])
    report = read_dataset(path, tmp_path / "work")
    (example,) = report.examples
    pathway = ClassifierLabelPathway(shared_classifier(model_cache_dir))
    renderer = Renderer("offline", tokenizer, SYSTEM, describe=image_describer(pathway))
    ids = renderer.prompt_ids(example)

    # The chat side: both photos uploaded, then the session's messages and the backend's prepare.
    info = BackendInfo(preset="offline", kind="offline", source="builtin:x", device="cpu", dtype="float32",
                       quantization="none", context_length=2048)
    chat = OfflineBackend(None, tokenizer, pathway, info)
    uploads = [ingest_upload(str(photos / n), store_dir=tmp_path / "chat", limits=UploadLimits())
               for n in ("cat.jpg", "coffee.png")]
    messages, _ = render_messages(SYSTEM, [Turn("user", "Which is the drink, or ?", ("a", "b"))])
    sent = chat.prepare(messages, [u.open_image() for u in uploads]).inputs["input_ids"][0].tolist()
    text = tokenizer.decode(ids)
    assert "[Image 1: a photo of a cat" in text and "[Image 2: a photo of " in text
    assert ids == sent
    with pytest.raises(UserFacingError, match=r"images \(.*\.jpg, .*\.png\) but this renderer has no image describer"):
        Renderer("offline", tokenizer, SYSTEM).encode(example)
    with pytest.raises(UserFacingError, match="training on pixels is not supported"):
        Renderer("tiny", tokenizer, SYSTEM).encode(example)


# ------------------------------------------------------------------------------ whole files


def _zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return path


ROW = json.dumps({"question": "q", "answer": "a"}).encode()


def test_bad_files_are_refused_whole_in_under_a_second_naming_the_file(tmp_path):
    cases = {
        "report.pdf": (b"%PDF-1.7\n" + b"x" * 100, r"not JSON or JSONL \(it looks like PDF\)"),
        "table.csv": (b"question,answer\nq,a\n", r"not JSON or JSONL \(it starts with 'question,answer'\)"),
        "empty.jsonl": (b"", r"the file is empty \(0 bytes\)"),
        "blank.jsonl": (b"\n \n\n", r"the file is empty \(only blank lines\)"),
        "huge.jsonl": (ROW + b"\n" + b" " * 5000, r"the file is 4.9 KB, over the limit of 4 KB; accepted: a dataset "
                                                 r"file of at most 4 KB"),
        "many.jsonl": (b"\n".join([ROW] * 6), r"it has 6 rows, more than the limit of 5; accepted: at most 5 rows "
                                              r"\(\[finetune\] max_rows\)"),
        "list.json": (b"[" + b",".join([ROW] * 6) + b"]", r"it has 6 rows, more than the limit of 5"),
        "cut.json": (b"[" + ROW + b", {\"question\": ", r"not valid JSON: Expecting value at line 1 column \d+"),
    }
    bomb = _zip(tmp_path / "bomb.zip", {"data.jsonl": ROW + b"\n" + b" " * (3 * 2**20)})
    climbing = _zip(tmp_path / "climbing.zip", {"data.jsonl": ROW, "../../evil.png": b"x"})
    linked = _zip(tmp_path / "linked.zip", {"data.jsonl": ROW}, links=("photos/cat.jpg",))
    two = _zip(tmp_path / "two.zip", {"a.jsonl": ROW, "b.json": b"[" + ROW + b"]"})
    none = _zip(tmp_path / "none.zip", {"readme.txt": b"hello"})
    zips = {
        bomb: r"member 'data.jsonl' expands [\d,]+x \(.* to 3 MB\), over the limit of 100x \(a zip bomb\?\)",
        climbing: r"member '../../evil.png' climbs out of the folder with '..'; accepted: a zip with plain relative",
        linked: r"member 'photos/cat.jpg' is a symbolic link",
        two: r"the zip holds 2 data files \(a.jsonl, b.json\); accepted: a zip of ONE .jsonl/.json file",
        none: r"the zip holds no .jsonl or .json file",
    }
    paths = {}
    for name, (content, pattern) in cases.items():
        (tmp_path / name).write_bytes(content)
        paths[tmp_path / name] = pattern
    paths.update(zips)
    work = tmp_path / "work"
    limits = DatasetLimits(max_bytes=4096, max_rows=5)
    for path, pattern in paths.items():
        started = time.perf_counter()
        with pytest.raises(UserFacingError) as caught:
            read_dataset(path, work, limits if path.suffix != ".zip" else DatasetLimits(max_rows=5),
                         name=f"my {path.name}")
        assert time.perf_counter() - started < 1.0, path.name
        assert str(caught.value).startswith(f"my {path.name}: "), str(caught.value)
        assert re.search(pattern, str(caught.value)), (path.name, str(caught.value))
    assert not work.exists()


def test_images_in_a_zip_get_the_chats_messages_fast(tmp_path, photos):
    rows = [{"question": "What is it?", "answer": "Big.", "image": "bomb.png"},
            {"question": "What is it?", "answer": "Words.", "image": "words.png"},
            {"question": "What is it?", "answer": "A cat.", "image": "cat.jpg"},
            {"question": "What is it?", "answer": "Heavy.", "image": "heavy.png"}]
    path = _zip(tmp_path / "set.zip", {
        "data.jsonl": "\n".join(json.dumps(r) for r in rows).encode(), "bomb.png": png_declaring(50_000, 50_000),
        "words.png": b"just some words", "cat.jpg": (photos / "cat.jpg").read_bytes(), "heavy.png": b"\x00" * 4000})
    started = time.perf_counter()
    report = read_dataset(path, tmp_path / "work", DatasetLimits(upload=UploadLimits(max_bytes=200_000)))
    assert time.perf_counter() - started < 1.0
    assert [(b.where, b.reason) for b in report.bad] == [
        ("line 1 image", "bomb.png: image is 2500 megapixels; the limit is 40 megapixels (refused as a decompression "
                         "bomb)."),
        ("line 2 image", "words.png: not an image (detected text); accepted: PNG, JPEG, WEBP, GIF, BMP"),
        ("line 4 image", "heavy.png: not a recognised image; accepted: PNG, JPEG, WEBP, GIF, BMP")]
    assert [e.answer for e in report.examples] == ["A cat."]
    assert {p.name for p in (tmp_path / "work").rglob("*") if p.is_file()} == {Path(report.examples[0].images[0]).name}
    small = read_dataset(path, tmp_path / "work", DatasetLimits(upload=UploadLimits(max_bytes=1000)))
    assert small.bad[2].where == "line 3 image" and not small.examples
    assert re.fullmatch(r"cat.jpg: file is [\d.]+ KB; the limit is 1000 bytes\.", small.bad[2].reason)


# ------------------------------------------------------------------------------ lengths, split, mix


def test_lengths_split_mix_and_builtin_datasets(tokenizer):
    report = builtin_dataset("caption", 30)
    from mmchat.training import builtin_data

    assert report.examples == builtin_data.generate("caption", 30) and set(BUILTIN) == set(builtin_data.STYLES)
    assert report.lines[0] == "example 1" and sum(report.kinds.values()) == 30
    long = Example("word " * 300, "x")
    report.examples.append(long)
    report.lines.append("example 31")
    lengths = check_lengths(report, Renderer("offline", tokenizer, SYSTEM, max_length=200))
    assert len(lengths.examples) == len(lengths.encoded) == 30 and long not in lengths.examples
    (too_long,) = lengths.bad
    assert too_long.where == "example 31"
    assert re.fullmatch(r"the row is (\d+) tokens once rendered, more than the cutoff \(max_length\) of 200; raise "
                        r"max_length or shorten it", too_long.reason)
    assert lengths.p50 <= lengths.p95 <= lengths.max == int(re.search(r"\d+", too_long.reason).group())
    assert "cutoff 200 (1 over it)" in report_markdown(report, lengths, (27, 3))
    assert bad_rows_table(report, lengths) == [["example 31", too_long.reason]]

    items = list(range(100))
    train, held = split(items, 0.1, seed=3)
    assert (train, held) == split(items, 0.1, seed=3) and held != split(items, 0.1, seed=4)[1]
    assert len(held) == 10 and sorted(train + held) == items and not set(train) & set(held)
    assert len(split(items, 0.9)[1]) == 64 and split([1], 0.5) == ([1], []) and len(split(items[:5], 0.01)[1]) == 1
    with pytest.raises(UserFacingError, match="eval_fraction 1.5 is out of range"):
        split(items, 1.5)

    captions = builtin_dataset("caption", 40).examples
    answers = builtin_dataset("one-word", 40).examples
    assert all(is_caption(e) for e in captions) and not any(is_caption(e) for e in answers)
    assert is_caption(Example("Describe the image.", "Two dogs play on a beach.")) and not is_caption(
        Example("Describe the image.", "dogs")) and is_caption(Example("Colour?", "Red.", kind="caption"))
    mixed = mix(captions + answers, (2, 1), seed=0)
    assert sum(map(is_caption, mixed)) == 40 and len(mixed) == 60
    assert mix(captions + answers, None, 0) == captions + answers and mix(captions, (2, 1), 0) == captions
    assert mixed == mix(captions + answers, (2, 1), seed=0)


def test_the_command_line_reads_any_format_and_refuses_bad_rows_unless_told(tmp_path):
    from mmchat.train import load_dataset

    jsonl(tmp_path / "rows.jsonl", [{"instruction": "Say hi.", "output": "Hi."}, {"question": "q"}])
    with pytest.raises(UserFacingError, match=r"rows.jsonl has 1 bad row\(s\): line 2: answer is missing; .*set "
                                              r"\[dataset\] skip_bad = true to train on the 1 usable rows"):
        load_dataset({"source": "rows.jsonl"}, tmp_path)
    examples, card = load_dataset({"source": "rows.jsonl", "skip_bad": True}, tmp_path)
    assert examples == [Example("Say hi.", "Hi.")] and card == {"source": "rows.jsonl", "seed": 0,
                                                               "formats": {"alpaca": 1}}
    with pytest.raises(UserFacingError, match=r"unknown \[dataset\] key\(s\) \['eval'\]; accepted: source, examples"):
        load_dataset({"source": "rows.jsonl", "eval": 1}, tmp_path)
    examples, _ = load_dataset({"source": "builtin:json", "examples": 3}, tmp_path)
    assert len(examples) == 3
    from mmchat.config import AppConfig, FinetuneConfig

    limits = DatasetLimits.from_config(AppConfig(finetune=FinetuneConfig(max_rows=7, max_upload_mb=3),
                                                 limits=UploadLimits(max_images_per_message=2)))
    assert (limits.max_rows, limits.max_bytes, limits.max_images, limits.upload.max_images_per_message) == (
        7, 3 * 2**20, 2, 2)
