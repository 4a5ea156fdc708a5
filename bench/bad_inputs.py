"""The reported bad inputs, timed through the real upload paths: `python -m bench.bad_inputs`.

Builds each input like the one outside testing reported (a 16000 x 1 PNG, PNG zTXt/iCCP
metadata bombs, a 6325 x 6325 PNG, 100,000 nested <div>s, 100,000 Markdown headers, a .docx
whose document.xml inflates to 185 MB, Latin-1 German, Shift-JIS Japanese, random high bytes,
a 1.9 M-character line without spaces) and sends it through

- the chat path: `attachments.ingest_upload` (images only), and
- the knowledge path: `KnowledgeBase.ingest` with the shipped MiniLM, the stand-in image
  encoder and embedded Chroma in a temp dir (reading, splitting, embedding, storing),

printing seconds, the growth of peak resident memory (psutil, sampled every 20 ms) and the
outcome (the refusal message, or chunks and the longest chunk). `--long-line-chars 0` skips
the long line, whose ~1,600 chunks take a minute or two to embed on two CPU cores.
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

MB = 1024 * 1024


def _png(size, mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _metadata_bomb(kind: bytes, head: bytes) -> bytes:
    base = _png((8, 8))
    payload = head + zlib.compress(bytes(50 * MB), 9)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return base[:33] + chunk + base[33:]


def _docx_185mb() -> bytes:
    para = "<w:p><w:r><w:t>" + "lorem ipsum dolor sit amet " * 4 + "</w:t></w:r></w:p>"
    body = para * (185 * MB // len(para))
    xml = ('<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
           'wordprocessingml/2006/main"><w:body>' + body + "</w:body></w:document>").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", xml)
    return buf.getvalue()


def inputs(long_line_chars: int) -> dict[str, bytes]:
    rng = random.Random(0)
    german = "Sehr geehrte Damen und Herren, die Größe der Straße in München ist schön.\n" * 60
    japanese = "日本語のテキストです。これはテストの文章です。東京は大きい都市です。\n" * 60
    found = {
        "strip-16000x1.png": _png((16000, 1)),
        "ztxt-bomb.png": _metadata_bomb(b"zTXt", b"Comment\x00\x00"),
        "iccp-bomb.png": _metadata_bomb(b"iCCP", b"icc\x00\x00"),
        "6325x6325.png": _png((6325, 6325), "1"),
        "nested-divs.html": ("<html><body>" + "<div>" * 100_000 + "x" + "</div>" * 100_000 + "</body></html>").encode(),
        "headers.md": "".join(f"# h{i}\nx\n" for i in range(100_000)).encode(),
        "xml-185mb.docx": _docx_185mb(),
        "german-latin1.txt": german.encode("latin-1"),
        "japanese-sjis.txt": japanese.encode("shift_jis"),
        "random-high.txt": bytes(rng.randrange(0x80, 0x100) for _ in range(20_000)),
    }
    if long_line_chars:
        found["long-line.txt"] = b"a" * long_line_chars
    return found


class Peak:
    """Peak resident memory of this process while the block runs, minus where it started."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started
        self._done.set()
        self._thread.join()
        self.grown_mb = (max(self.peak, self._proc.memory_info().rss) - self.base) / MB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bad_inputs", description=__doc__.split("\n")[0])
    parser.add_argument("--long-line-chars", type=int, default=1_900_000)
    args = parser.parse_args(argv)

    from mmchat.attachments import ingest_upload
    from mmchat.config import KnowledgeConfig, UploadLimits
    from mmchat.errors import InvalidUpload
    from mmchat.knowledge.base import KnowledgeBase
    from mmchat.knowledge.embeddings import load_text_embedder
    from mmchat.vision.standin import StandInEncoder

    work = Path(tempfile.mkdtemp(prefix="mmchat-bench-bad-"))
    kb = KnowledgeBase(KnowledgeConfig(path=str(work / "kb"), seed_demo=False), encoder=StandInEncoder(),
                       text_embedder=load_text_embedder("auto"))
    kb.ingest([(b"Warm up the readers, the splitter and the embedder.", "warm.txt")])
    rows = []
    for name, data in inputs(args.long_line_chars).items():
        if name.endswith(".png"):
            with Peak() as peak:
                try:
                    ingest_upload(data, store_dir=work / "chat", limits=UploadLimits(), original_name=name)
                    outcome = "accepted"
                except InvalidUpload as err:
                    outcome = str(err)
            rows.append(("chat", name, len(data), peak, outcome))
            _show(rows[-1])
        with Peak() as peak:
            report = kb.ingest([(data, name)])
        if report.added:
            record = report.added[0]
            texts = kb.store.text_collection.get(where={"doc_id": record.doc_id}, include=["documents"])["documents"]
            longest = max((len(t) for t in texts), default=0)
            outcome = f"indexed: {record.chunks} chunks, longest {longest:,} characters"
        else:
            outcome = report.summary()
        rows.append(("knowledge", name, len(data), peak, outcome))
        _show(rows[-1])
    return 0


def _show(row) -> None:
    path, name, size, peak, outcome = row
    print(f"{path:9} {name:20} {size / MB:7.2f} MB {peak.seconds:7.2f} s {peak.grown_mb:+6.0f} MB  "
          f"{outcome[:220]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
