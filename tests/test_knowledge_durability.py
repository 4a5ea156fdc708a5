"""The knowledge base's durability and its Chroma server mode, on real parts only.

Everything here is real: a real Chroma server (`chroma run`, a subprocess on a free loopback
port), real embedded Chroma stores in temp dirs, the shipped MiniLM text embedder, the
stand-in image encoder, and real worker processes (forked by multiprocessing's fork server,
each with its own models, Chroma client and knowledge base) that are killed with a real
SIGKILL. Nothing is mocked and nothing downloads.

Covers:
- server mode: ingest (English, Chinese, an image), search, `where`/status, delete; a new
  `KnowledgeBase` on the same server sees the same documents; a dead server is refused with
  a message that says how to start one; the server's own data survives a server restart;
  embedded and server stores rank the same files for the same questions;
- a process restart: what one process indexed, the next one lists and finds, BM25 included
  (the lexical index is rebuilt from the store on open; it is not saved anywhere);
- SIGKILL part-way through an ingest: the base opens, lists exactly the acknowledged
  documents, holds no chunk of the interrupted one, answers, and takes that file again;
- reads during an ingest: every `documents()` snapshot is a prefix of the ingest order and
  each listed document has all of its chunks (the manifest record is written last).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmchat.config import KnowledgeConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests" / "fixtures" / "rag" / "docs"
IMAGES = ROOT / "knowledge" / "images"

pytestmark = pytest.mark.slow

# With chunk_size=48 these documents take two or more embedding batches (EMBED_BATCH = 32
# chunks), so an ingest can be caught between a written batch and the manifest record.
SMALL_CHUNKS = {"chunk_size": 48, "chunk_overlap": 8}
MULTI_BATCH = ["dumplings.md", "lanwan-leave-policy.md", "qingchuan-metro.md", "tea-longjing.md"]
SINGLE_BATCH = [
    "bicycle-chain-care.md", "burn-first-aid.txt", "coffee-pourover.md", "handbook-remote-work.md",
    "handbook-travel-expenses.md", "jupiter-moons.md", "kayak-cold-water.html", "meteor-showers.txt",
]
SERVER_DOCS = ["tea-longjing.md", "zx-pump-manual.txt", "handbook-travel-expenses.md", "dumplings.md"]
QUERIES = [
    "西湖龙井的产地在哪里",
    "ZX-4471 impeller kit",
    "What is the daily allowance for food on a business trip?",
    "煮饺子的时候一共要加几回凉水？",
    "how do I keep a pump running quietly",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               ANONYMIZED_TELEMETRY="False")
    return env


def _free_port(avoid: set[int] = frozenset()) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _sha(name: str) -> str:
    return hashlib.sha256((DOCS / name).read_bytes()).hexdigest()


def _names(kb) -> list[str]:
    return [d.file_name for d in kb.documents()]


def _top(kb, query: str, k: int = 3) -> list[str]:
    """The ranking itself (no relevance floor: these tests are about what the store holds)."""
    return [h.file_name for h in kb.search(query, top_k=k, image_top_k=0, min_relevance=0).hits]


def _assert_consistent(kb) -> None:
    """Each listed document has exactly its chunks, and no chunk belongs to an unlisted one."""
    records = kb.documents()
    for record in records:
        got = kb.store.text_collection.get(where={"doc_id": record.doc_id}, include=[])
        assert len(got["ids"]) == record.chunks, record.file_name
    assert kb.counts()["chunks"] == sum(r.chunks for r in records)
    assert kb.counts()["documents"] == len(records)
    # Kept file copies: exactly one per listed document (a killed ingest's copy is removed).
    assert sorted(p.name for p in kb.files_dir.iterdir()) == sorted(r.stored for r in records)
    kb.retriever.refresh_lexical()  # builds it from the store if this process has not yet
    assert len(kb.retriever.lexical) == kb.counts()["chunks"]


# ----- a real Chroma server ------------------------------------------------------------------
@dataclass
class ChromaServer:
    process: subprocess.Popen
    port: int
    path: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _chroma_cli() -> str:
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if not found:
        pytest.fail("the `chroma` command (installed with chromadb) is not on this machine")
    return found


@pytest.fixture
def chroma_server(tmp_path):
    """`chroma_server(path)` starts `chroma run` on a free loopback port and waits for it."""
    import chromadb

    from mmchat.knowledge.store import chroma_settings

    servers: list[ChromaServer] = []

    def start(path: Path) -> ChromaServer:
        port = _free_port(avoid={s.port for s in servers})  # a restart gets a new port
        log = tmp_path / f"chroma-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [_chroma_cli(), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
            )
        server = ChromaServer(process, port, Path(path), log)
        servers.append(server)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"`chroma run` exited with {process.returncode}:\n{server.output()}")
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port, settings=chroma_settings()).heartbeat()
                return server
            except Exception as err:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Chroma server never answered its heartbeat ({err!r}):\n{server.output()}")
                time.sleep(0.25)

    yield start
    for server in servers:
        server.stop()


def test_server_mode_behaves_like_embedded_and_survives_restarts(
    chroma_server, tmp_path, standin_encoder, text_embedder
):
    import chromadb

    from mmchat.errors import ModelUnavailable
    from mmchat.knowledge.base import KnowledgeBase
    from mmchat.knowledge.store import chroma_settings

    data = tmp_path / "server-data"
    server = chroma_server(data)

    def open_kb(port: int) -> KnowledgeBase:
        config = KnowledgeConfig(path=str(tmp_path / "kb"), host="127.0.0.1", port=port)
        return KnowledgeBase(config, encoder=standin_encoder, text_embedder=text_embedder)

    kb = open_kb(server.port)
    settings = kb.store.client.get_settings()  # an HTTP client of that server
    assert (settings.chroma_server_host, int(settings.chroma_server_http_port)) == ("127.0.0.1", server.port)
    assert not (tmp_path / "kb" / "chroma").exists()  # nothing embedded was created
    report = kb.ingest([DOCS / n for n in SERVER_DOCS] + [IMAGES / "cat.png"])
    assert not report.failed and not report.cancelled, report.summary()
    assert sorted(_names(kb)) == sorted(SERVER_DOCS + ["cat.png"])
    chunks = sum(r.chunks for r in report.added)
    assert kb.counts() == {"documents": 5, "chunks": chunks, "images": 1}
    _assert_consistent(kb)
    # The chunks really are on the server: a plain client sees them.
    plain = chromadb.HttpClient(host="127.0.0.1", port=server.port, settings=chroma_settings())
    assert plain.get_collection("mmchat_text").count() == chunks

    assert _top(kb, "西湖龙井的产地在哪里")[0] == "tea-longjing.md"  # Chinese: BM25 bigrams
    top = kb.search("ZX-4471 impeller kit", top_k=3, image_top_k=0).hits[0]
    assert top.file_name == "zx-pump-manual.txt" and top.lexical_rank is not None
    assert [h.file_name for h in kb.search("a photo of a cat", image_top_k=1).images] == ["cat.png"]
    assert (kb.config.host, kb.config.port) == ("127.0.0.1", server.port) and kb.counts()["documents"] == 5

    pump = next(d for d in kb.documents() if d.file_name == "zx-pump-manual.txt")
    kb.delete(pump.doc_id)
    assert "zx-pump-manual.txt" not in _names(kb)
    assert "zx-pump-manual.txt" not in _top(kb, "ZX-4471 impeller kit", k=5)
    assert plain.get_collection("mmchat_text").get(where={"doc_id": pump.doc_id})["ids"] == []
    listed = [(d.doc_id, d.file_name, d.chunks) for d in kb.documents()]
    del kb

    # A new KnowledgeBase (a restarted app) on the same server sees the same base.
    again = open_kb(server.port)
    assert [(d.doc_id, d.file_name, d.chunks) for d in again.documents()] == listed
    assert _top(again, "西湖龙井的产地在哪里")[0] == "tea-longjing.md"
    _assert_consistent(again)
    del again

    # A dead server is refused, naming the way to start one.
    server.stop()
    with pytest.raises(ModelUnavailable, match=r"chroma run --path DIR --port PORT") as refused:
        open_kb(server.port)
    assert f"127.0.0.1:{server.port}" in str(refused.value)

    # The server's data outlives the server: restart it on the same --path, another port.
    restarted = chroma_server(data)
    assert restarted.port != server.port
    back = open_kb(restarted.port)
    assert [(d.doc_id, d.file_name, d.chunks) for d in back.documents()] == listed
    assert _top(back, "西湖龙井的产地在哪里")[0] == "tea-longjing.md"
    assert [h.file_name for h in back.search("a photo of a cat", image_top_k=1).images] == ["cat.png"]
    _assert_consistent(back)


def test_embedded_and_server_stores_rank_the_same_files(
    chroma_server, tmp_path, make_knowledge, standin_encoder, text_embedder
):
    from mmchat.knowledge.base import KnowledgeBase

    docs = [DOCS / n for n in SERVER_DOCS + ["tea-oolong.txt", "coffee-pourover.md", "steamed-buns.txt"]]
    server = chroma_server(tmp_path / "server-data")
    remote = KnowledgeBase(
        KnowledgeConfig(path=str(tmp_path / "remote"), host="127.0.0.1", port=server.port),
        encoder=standin_encoder, text_embedder=text_embedder,
    )
    local = make_knowledge()
    for kb in (remote, local):
        report = kb.ingest(docs)
        assert len(report.added) == len(docs), report.summary()
    assert [(d.doc_id, d.chunks) for d in remote.documents()] == [(d.doc_id, d.chunks) for d in local.documents()]
    for query in QUERIES:
        assert _top(remote, query) == _top(local, query), query
    assert _top(local, QUERIES[0])[0] == "tea-longjing.md"  # not trivially equal (e.g. both empty)


# ----- worker processes --------------------------------------------------------------------
# Workers are real processes forked by multiprocessing's fork server, which imports the heavy
# libraries once (sentence-transformers alone takes ~8 s to import on a small machine). Each
# worker loads its own models, opens its own Chroma client and knowledge base, and is killed
# with a real SIGKILL; it shares nothing with the test process but the files on disk.
PRELOAD = [
    "torch", "sentence_transformers", "llama_index.core", "llama_index.embeddings.huggingface",
    "llama_index.vector_stores.chroma", "chromadb", "bm25s", "mmchat.config", "mmchat.vision",
    "mmchat.knowledge.base", "mmchat.knowledge.embeddings", "mmchat.knowledge.loaders",
]


def _worker_main(spec: dict, out, log: str) -> None:
    """A worker process: index `spec["files"]` one by one, reporting each step on `out`.

    Protocol: `READY`, then per file `EMBEDDED <name> <done> <total>` per written batch and
    `ACK <name>` once `ingest` returned it as added; `MIDWAY <name>` (then it sleeps until
    killed) at the first partly written file after `pause_after` acknowledgements; at the end
    `DOCS <json>`, `SEARCH <json>` per query, `DONE`.
    """
    import re

    with open(log, "ab", buffering=0) as sink:  # library chatter goes to the log, not to pytest
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

    from mmchat.config import EncoderConfig
    from mmchat.knowledge.base import KnowledgeBase
    from mmchat.knowledge.embeddings import load_text_embedder
    from mmchat.vision import load_image_encoder

    def say(*parts) -> None:
        out.send(" ".join(str(p) for p in parts))

    import mmchat.knowledge.base as knowledge_base

    # Write every embedded batch at once, so "EMBEDDED" means "these chunks are in Chroma".
    knowledge_base.STORE_BATCH = knowledge_base.EMBED_BATCH
    encoder = load_image_encoder(EncoderConfig(kind="standin"), cache_dir=Path(spec["cache_dir"]))
    kb = KnowledgeBase(KnowledgeConfig(path=spec["path"], **spec["config"]), encoder=encoder,
                       text_embedder=load_text_embedder("auto"))
    say("READY")
    acked = 0
    for file in spec["files"]:
        name = Path(file).name

        def progress(fraction: float, message: str) -> None:
            step = re.search(r"embedded (\d+)/(\d+) chunks", message)
            if not step:
                return
            say("EMBEDDED", name, step.group(1), step.group(2))
            pause = spec.get("pause_after")
            if pause is not None and acked >= pause and int(step.group(1)) < int(step.group(2)):
                say("MIDWAY", name)  # some batches written, the manifest record not yet
                time.sleep(600)

        report = kb.ingest([file], progress=progress)
        if report.failed or not report.added:
            say("FAILED", report.summary())
            return
        acked += 1
        say("ACK", name)
    docs = [{"doc_id": d.doc_id, "file_name": d.file_name, "chunks": d.chunks} for d in kb.documents()]
    say("DOCS", json.dumps(docs, ensure_ascii=False))
    for query in spec.get("queries", []):
        hits = kb.search(query, top_k=3, image_top_k=0).hits
        say("SEARCH", json.dumps({"query": query, "ids": [h.id for h in hits]}, ensure_ascii=False))
    say("DONE")


class Worker:
    """One worker process; `expect()` reads its protocol lines, `kill()` SIGKILLs it."""

    def __init__(self, context, spec: dict, log: Path) -> None:
        self.path = Path(spec["path"])
        self.files = [Path(f).name for f in spec["files"]]
        self.log = log
        self._lines, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_worker_main, args=(spec, writer, str(log)), daemon=True)
        self.process.start()
        writer.close()  # the child holds the only writer: its death reads as EOF here
        self.seen: list[str] = []

    def expect(self, predicate, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            problem = None
            try:
                if self._lines.poll(max(0.0, deadline - time.monotonic())):
                    line = self._lines.recv()
                else:
                    problem = "timed out"
            except (EOFError, OSError):
                self.process.join(timeout=5)
                problem = f"exited with {self.process.exitcode}"
            if problem:
                self.kill()
                pytest.fail(f"worker {problem} after {self.seen[-5:]}; its output:\n{self.output()}")
            self.seen.append(line)
            if predicate(line):
                return line

    def acked(self) -> list[str]:
        return [line.split(" ", 1)[1] for line in self.seen if line.startswith("ACK ")]

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")[-4000:] if self.log.exists() else ""

    def kill(self) -> int:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=30)
        return self.process.exitcode


@pytest.fixture(scope="module", autouse=True)
def fork_server():
    """Start the fork server with the module's first test, so its imports overlap with it."""
    import multiprocessing
    import multiprocessing.forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    yield context
    stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)
    if stop is not None:  # frees its ~1 GB; a later user starts a new one
        stop()


@pytest.fixture
def worker(tmp_path, fork_server, model_cache_dir):
    """`worker(files, **spec)` starts a worker process on a fresh knowledge base folder."""
    started: list[Worker] = []

    def start(files: list[str], **spec) -> Worker:
        folder = tmp_path / f"worker-{len(started)}"
        folder.mkdir()
        spec.update(path=str(folder / "kb"), cache_dir=str(model_cache_dir), files=[str(DOCS / f) for f in files])
        spec.setdefault("config", {})
        started.append(Worker(fork_server, spec, folder / "worker.log"))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def _kill_order(after: int) -> tuple[list[str], str]:
    """`after` single-batch files, then a multi-batch one (the victim), then the rest."""
    victim = MULTI_BATCH[after % len(MULTI_BATCH)]
    return SINGLE_BATCH[:after] + [victim] + SINGLE_BATCH[after:], victim


KILL_POINTS = (1, 3, 6)  # acknowledged files before the kill
RESTART_QUERIES = ["西湖龙井的产地在哪里", "ZX-4471 impeller kit"]


def _open(path: Path, encoder, embedder, **config):
    from mmchat.knowledge.base import KnowledgeBase

    return KnowledgeBase(KnowledgeConfig(path=str(path), **config), encoder=encoder, text_embedder=embedder)


def test_a_restarted_process_finds_what_the_last_one_indexed(worker, standin_encoder, text_embedder):
    first = worker(["tea-longjing.md", "zx-pump-manual.txt"], queries=RESTART_QUERIES)
    docs = json.loads(first.expect(lambda l: l.startswith("DOCS ")).split(" ", 1)[1])
    searched = {}
    for _ in RESTART_QUERIES:
        found = json.loads(first.expect(lambda l: l.startswith("SEARCH ")).split(" ", 1)[1])
        searched[found["query"]] = found["ids"]
    first.expect(lambda l: l == "DONE")
    # It exits as a multiprocessing child does (os._exit: no atexit handlers, no interpreter
    # shutdown), so nothing may depend on a graceful close of the store.
    first.process.join(timeout=60)
    assert first.process.exitcode == 0, first.output()
    assert [d["file_name"] for d in docs] == ["tea-longjing.md", "zx-pump-manual.txt"]

    kb = _open(first.path, standin_encoder, text_embedder)
    assert [{"doc_id": d.doc_id, "file_name": d.file_name, "chunks": d.chunks} for d in kb.documents()] == docs
    _assert_consistent(kb)
    # BM25 is rebuilt from the store (it is saved nowhere): it finds Chinese by bigrams.
    top = kb.search(RESTART_QUERIES[0], top_k=3, image_top_k=0).hits[0]
    assert top.file_name == "tea-longjing.md" and top.lexical_rank is not None
    assert len(kb.retriever.lexical) == sum(d["chunks"] for d in docs) > 0
    longjing = docs[0]["doc_id"]
    lexical = kb.retriever.lexical.search("龙井", 3)
    assert lexical and all(kb.store.get_text([h.id])[h.id][1]["doc_id"] == longjing for h in lexical)
    # The same questions get the same chunks as in the process that indexed them.
    for query in RESTART_QUERIES:
        assert [h.id for h in kb.search(query, top_k=3, image_top_k=0).hits] == searched[query], query


VICTIM_QUESTIONS = {
    "dumplings.md": "煮饺子的时候一共要加几回凉水？",
    "lanwan-leave-policy.md": "在蓝湾科技工作了十二年，每年能休几天带薪年假？",
    "qingchuan-metro.md": "青川地铁周五晚上最后一班车几点开？",
    "tea-longjing.md": "泡西湖龙井应该用多少度的水？",
}


@pytest.mark.parametrize("after", KILL_POINTS)
def test_sigkill_part_way_through_an_ingest_leaves_only_acknowledged_documents(
    after, worker, standin_encoder, text_embedder
):
    import chromadb

    from mmchat.knowledge.store import chroma_settings

    order, victim = _kill_order(after)
    proc = worker(order, config=SMALL_CHUNKS, pause_after=after)
    assert proc.expect(lambda l: l.startswith("MIDWAY ")) == f"MIDWAY {victim}"
    acked = proc.acked()
    assert acked == order[:after]
    assert proc.kill() == -signal.SIGKILL

    # The killed process left the victim's written batches behind, with no manifest record...
    raw = chromadb.PersistentClient(path=str(proc.path / "chroma"), settings=chroma_settings())
    leftovers = raw.get_collection("mmchat_text").get(where={"doc_id": _sha(victim)}, include=[])["ids"]
    assert len(leftovers) >= 32
    assert raw.get_collection("mmchat_documents").get(ids=[_sha(victim)])["ids"] == []

    # ...which opening the base removes: it lists exactly what was acknowledged.
    kb = _open(proc.path, standin_encoder, text_embedder, **SMALL_CHUNKS)
    assert _names(kb) == acked
    assert kb.store.text_collection.get(where={"doc_id": _sha(victim)}, include=[])["ids"] == []
    _assert_consistent(kb)
    assert _top(kb, "When should an 11-speed chain be swapped for a new one?")[0] == "bicycle-chain-care.md"
    assert victim not in _top(kb, VICTIM_QUESTIONS[victim], k=5)
    # The interrupted file goes in cleanly next time.
    report = kb.ingest([DOCS / victim])
    assert [r.file_name for r in report.added] == [victim] and not report.duplicates
    assert _names(kb) == acked + [victim]
    _assert_consistent(kb)
    assert _top(kb, VICTIM_QUESTIONS[victim], k=5)[0] == victim


def test_sigkill_at_an_unplanned_moment_leaves_a_consistent_base(worker, standin_encoder, text_embedder):
    """No pause: the kill lands wherever the worker happens to be right after a written batch."""
    proc = worker(MULTI_BATCH + SINGLE_BATCH, config=SMALL_CHUNKS)

    def killable(line: str) -> bool:
        acked = proc.acked()
        return len(acked) >= 2 and line.startswith("EMBEDDED ") and line.split()[1] not in acked

    in_flight = proc.expect(killable).split()[1]
    os.kill(proc.process.pid, signal.SIGKILL)
    acked = proc.acked()
    assert proc.kill() == -signal.SIGKILL

    kb = _open(proc.path, standin_encoder, text_embedder, **SMALL_CHUNKS)
    listed = _names(kb)
    # The record may have been written between the last line read and the kill; nothing else.
    assert listed in (acked, acked + [in_flight]), (listed, acked, in_flight)
    _assert_consistent(kb)
    missing = [DOCS / n for n in proc.files if n not in listed][:3]
    report = kb.ingest(missing)
    assert [r.file_name for r in report.added] == [p.name for p in missing]
    _assert_consistent(kb)


# ----- reads during an ingest ------------------------------------------------------------------
def test_reads_during_an_ingest_only_ever_see_whole_documents(make_knowledge, monkeypatch):
    import mmchat.knowledge.base as knowledge_base

    monkeypatch.setattr(knowledge_base, "STORE_BATCH", knowledge_base.EMBED_BATCH)  # more mid-document states
    kb = make_knowledge(**SMALL_CHUNKS)
    order = [MULTI_BATCH[0], SINGLE_BATCH[0], MULTI_BATCH[1], SINGLE_BATCH[1], MULTI_BATCH[2], MULTI_BATCH[3]]
    errors: list[BaseException] = []
    snapshots: list[list[str]] = []
    mid_document = 0
    done = threading.Event()

    def read() -> None:
        nonlocal mid_document
        try:
            while not done.is_set():
                records = kb.documents()
                names = [r.file_name for r in records]
                assert names == order[: len(names)], names  # acknowledged in ingest order
                for record in records:
                    got = kb.store.text_collection.get(where={"doc_id": record.doc_id}, include=[])
                    assert len(got["ids"]) == record.chunks, (record.file_name, len(got["ids"]), record.chunks)
                mid_document += kb.counts()["chunks"] > sum(r.chunks for r in records)
                kb.search("西湖龙井的产地在哪里", top_k=3, image_top_k=1)
                snapshots.append(names)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        report = kb.ingest([DOCS / n for n in order])
    finally:
        done.set()
        reader.join(timeout=60)
    assert not errors, errors[0]
    assert [r.file_name for r in report.added] == order
    _assert_consistent(kb)
    # The reader really looked while the ingest was under way, also between batches of one file.
    assert len({len(s) for s in snapshots}) >= 3, [len(s) for s in snapshots]
    assert mid_document > 0
