"""Knowledge store vs raw Chroma: same vectors, same index, same texts.

`python -m bench knowledge --sizes 10000 100000 --queries 200`

Everything runs in fresh temp dirs with embedded Chroma (telemetry off, cosine space, no
embedding function), on precomputed random unit vectors (384-d, MiniLM's size) and synthetic
chunk texts (~60 words drawn from a Zipf-distributed vocabulary of a few thousand words,
some identifiers like `zx-4471`, and a few CJK chunks), so BM25 has realistic posting lists.
Query embedding (MiniLM) is excluded everywhere: all paths are given the same vectors.

1. Retrieval latency at each size N. The store is built once through our path
   (`KnowledgeStore.add_text_nodes`); the peer queries the same text collection directly, so
   it shares vectors, HNSW index and stored rows. Per query vector, interleaved (the order is
   rotated per query, so cache warmth and machine noise hit all three equally):
   - raw: `collection.query(query_embeddings=[v], n_results=20, include=[documents,
     metadatas, distances])`, what our dense step asks Chroma for;
   - dense: `HybridRetriever.search(text, top_k=4, query_embedding=v, lexical=False)`;
   - hybrid: `HybridRetriever.search(text, top_k=4, query_embedding=v)` (BM25 built before,
     the build timed on its own: the store scan and the tokenize + index step).
   Goal (issue): hybrid p95 <= 25 ms at 100k chunks on 2 cores; our path <= 1.5x raw (dense
   is the like-for-like check; hybrid also runs BM25 and fusion, its ratio is informative).
   Then one 32-chunk document is added to BM25 the way an acknowledged ingest does
   (`LexicalIndex.add`: re-runs BM25's statistics from the kept tokens, no store read) and
   timed, with the first hybrid query after it.
2. Ingestion throughput: `KnowledgeStore.add_text_nodes` with TextNodes built like
   `KnowledgeBase._index_text` builds them (embedding set, the SOURCE relation only, the same
   metadata), vs raw `collection.add(ids, embeddings, documents, metadatas)` with
   the chunk's own metadata (file_name, page, chunk, kind, added, content_hash, doc_id), same
   batch size, fresh collections, batches alternated between the paths. A third row adds the
   exact metadata dicts LlamaIndex writes (with its `_node_content` JSON) through the raw
   client, which splits our overhead into Python-side conversion and larger rows.
   Goal (issue): our chunks/s >= 0.8x raw.

3. With `--embedders`, each one's query-embedding latency on the same query texts, added to
   hybrid's mean (the store's vectors take the last embedder's width): what a question costs
   end to end with one embedder or another.

Prints a table and writes `bench/results/knowledge-<timestamp>.json`. CPU timings on a
2-core machine are distorted by anything else running: the load average is printed before
each phase and a warning given if the machine is busy.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

DIM = 384
RESULTS = Path(__file__).resolve().parent / "results"
STOP = "the of and to a in is that for it as with was on be by this are from or at an which".split()
CJK_POOL = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计"
CJK_CHUNKS_PER = 50  # one chunk in this many is Chinese
CJK_QUERY_EVERY = 20  # one query in this many is Chinese


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench knowledge", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000], help="store sizes (chunks) for retrieval")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed queries per size first")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=20, help="what the dense and BM25 steps each fetch")
    parser.add_argument("--build-batch", type=int, default=1000, help="add_text_nodes batch when building a store")
    parser.add_argument("--ingest-chunks", type=int, default=20000, help="chunks per path in the ingestion test (0: skip)")
    parser.add_argument("--ingest-batches", type=int, nargs="+", default=[32, 256], help="batch sizes to try (base.py writes 256: STORE_BATCH)")
    parser.add_argument("--words", type=int, default=60, help="words per synthetic chunk")
    parser.add_argument("--vocab", type=int, default=4000, help="distinct words in the synthetic vocabulary")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--embedders", nargs="*", default=[],
                        help="text embedders (e.g. builtin:all-MiniLM-L6-v2 builtin:use-multilingual) whose "
                             "query embedding is timed on the benchmark's queries and added to hybrid's latency; "
                             "the vectors then have the last one's width")
    parser.add_argument("--profile", action="store_true", help="also cProfile our dense and hybrid paths at the largest size")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON results")
    return parser.parse_args(argv)


# ----- synthetic data --------------------------------------------------------------------
class Corpus:
    """Deterministic synthetic chunks: chunk i is the same text/vector/metadata for any N."""

    def __init__(self, vocab_size: int, words: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["qu", "th", "sh", "ch"]
        vocab: list[str] = []
        seen = set(STOP)
        while len(vocab) < vocab_size:
            word = "".join(rng.choice(syllables, size=int(rng.integers(1, 5))))
            if word not in seen:
                seen.add(word)
                vocab.append(word)
        # Stopwords take the top ranks, as in real text (the tokenizer drops them).
        self.words = np.array(STOP + vocab, dtype=object)
        ranks = np.arange(1, len(self.words) + 1, dtype=np.float64)
        self.p = ranks**-1.07
        self.p /= self.p.sum()
        self.identifiers = [f"{a}{b}-{n}" for a, b, n in zip(
            rng.choice(list("abcdefghkmnprstxz"), 400), rng.choice(list("abcdefghkmnprstxz"), 400),
            rng.integers(100, 10000, 400))]
        cjk_ranks = np.arange(1, len(CJK_POOL) + 1, dtype=np.float64) ** -0.9
        self.cjk_p = cjk_ranks / cjk_ranks.sum()
        self.n_words = words
        self.seed = seed
        self.added = 1.7e9

    def _rng(self, kind: int, start: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, kind, start])

    def texts(self, start: int, stop: int) -> list[str]:
        rng = self._rng(1, start)
        out = []
        for i in range(start, stop):
            if i % CJK_CHUNKS_PER == CJK_CHUNKS_PER - 1:
                chars = rng.choice(list(CJK_POOL), size=self.n_words * 2, p=self.cjk_p)
                out.append("。".join("".join(chars[j : j + 24]) for j in range(0, len(chars), 24)) + "。")
                continue
            words = list(rng.choice(self.words, size=self.n_words, p=self.p))
            for j in np.nonzero(rng.random(self.n_words) < 0.01)[0]:
                words[j] = self.identifiers[int(rng.integers(len(self.identifiers)))]
            sentences = [" ".join(words[j : j + 12]) for j in range(0, len(words), 12)]
            out.append(". ".join(s[:1].upper() + s[1:] for s in sentences) + ".")
        return out

    def vectors(self, start: int, stop: int, kind: int = 2) -> np.ndarray:
        v = self._rng(kind, start).standard_normal((stop - start, DIM), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    def queries(self, count: int) -> tuple[list[str], np.ndarray]:
        rng = self._rng(3, 0)
        texts = []
        for q in range(count):
            if q % CJK_QUERY_EVERY == CJK_QUERY_EVERY - 1:
                texts.append("".join(rng.choice(list(CJK_POOL), size=int(rng.integers(4, 9)), p=self.cjk_p)))
                continue
            words = list(rng.choice(self.words, size=int(rng.integers(3, 8)), p=self.p))
            if q % 7 == 0:
                words[-1] = self.identifiers[int(rng.integers(len(self.identifiers)))]
            texts.append(" ".join(words) + "?")
        return texts, self.vectors(0, count, kind=4)

    @staticmethod
    def doc_of(i: int) -> tuple[str, str, int, int]:
        """(sha256, file name, page, chunk number) of chunk i: documents of 40 chunks, 4 per page."""
        doc = i // 40
        sha = hashlib.sha256(f"synthetic document {doc}".encode()).hexdigest()
        return sha, f"doc-{doc:06d}.pdf", (i % 40) // 4 + 1, i % 40

    def metadata(self, i: int) -> dict[str, Any]:
        """The metadata a chunk has on its node (base._index_text), plus the doc_id the store adds."""
        sha, name, page, chunk = self.doc_of(i)
        return {"file_name": name, "page": page, "kind": "pdf", "added": self.added,
                "content_hash": sha, "chunk": chunk, "doc_id": sha}

    @staticmethod
    def chunk_id(i: int) -> str:
        sha, _, _, chunk = Corpus.doc_of(i)
        return f"{sha[:24]}-{chunk:05d}"

    def nodes(self, start: int, stop: int, texts: list[str], vectors: np.ndarray) -> list[Any]:
        """TextNodes as `KnowledgeBase._index_text` hands them to the store."""
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        nodes = []
        for offset, i in enumerate(range(start, stop)):
            metadata = self.metadata(i)
            metadata.pop("doc_id")  # the store derives it from the SOURCE relation
            sha = metadata["content_hash"]
            relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=sha)}  # as base.py keeps
            nodes.append(TextNode(
                id_=self.chunk_id(i), text=texts[offset], metadata=metadata,
                excluded_embed_metadata_keys=[], excluded_llm_metadata_keys=[],  # cleared once embedded
                relationships=relationships, embedding=vectors[offset].tolist(),
                start_char_idx=0, end_char_idx=len(texts[offset]),
            ))
        return nodes


# ----- helpers ---------------------------------------------------------------------------
def load_line(label: str) -> float:
    load1 = os.getloadavg()[0]
    warn = "  WARNING: the machine is busy; timings will be distorted" if load1 > 0.5 else ""
    print(f"[{label}] load average (1 min) {load1:.2f} on {os.cpu_count()} cores{warn}", flush=True)
    return load1


def summary_ms(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    return {
        "p50": statistics.median(ms),
        "p95": ms[min(len(ms) - 1, max(0, int(round(0.95 * len(ms))) - 1))],
        "mean": statistics.fmean(ms),
        "max": ms[-1],
    }


def new_store(root: Path, prefix: str = "bench"):
    from mmchat.knowledge.store import KnowledgeStore, open_client

    client = open_client(root)
    store = KnowledgeStore(client, prefix, text_embedder=f"bench-random-{DIM}", text_dim=DIM,
                           image_encoder="none", image_dim=1)
    return client, store


def raw_collection(client: Any, name: str):
    # What KnowledgeStore._collection creates, through the plain client.
    return client.get_or_create_collection(
        name, embedding_function=None,
        metadata={"embedder": f"bench-random-{DIM}", "dim": DIM, "hnsw:space": "cosine"},
    )


def release_clients() -> None:
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    gc.collect()


def stub_embed_model():
    """Stands in for MiniLM: the benchmark always passes the query vector, so it must not run."""
    from llama_index.core.embeddings import MockEmbedding

    class NoEmbed(MockEmbedding):
        def _get_query_embedding(self, query: str):
            raise AssertionError("the benchmark must not embed queries")

    return NoEmbed(embed_dim=DIM)


# ----- 1. retrieval ----------------------------------------------------------------------
def build_store(store: Any, corpus: Corpus, size: int, batch: int) -> float:
    spent = 0.0
    for start in range(0, size, batch):
        stop = min(size, start + batch)
        nodes = corpus.nodes(start, stop, corpus.texts(start, stop), corpus.vectors(start, stop))
        t0 = time.perf_counter()
        store.add_text_nodes(nodes)
        spent += time.perf_counter() - t0
        if (stop // batch) % max(1, 20000 // batch) == 0:
            print(f"  built {stop}/{size} chunks ({stop / spent:.0f}/s in add_text_nodes)", flush=True)
    return spent


def bench_retrieval(corpus: Corpus, size: int, args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    from mmchat.knowledge.retrieval import HybridRetriever

    load = load_line(f"retrieval N={size}")
    root = Path(tempfile.mkdtemp(prefix=f"mmchat-bench-knowledge-{size}-"))
    try:
        client, store = new_store(root)
        build_s = build_store(store, corpus, size, args.build_batch)
        assert store.text_collection.count() == size, store.text_collection.count()

        retriever = HybridRetriever(store, stub_embed_model(), None)
        type(retriever.lexical)().replace_all([("warm", "import bm25s first", "d", {})])  # not timed: imports
        t0 = time.perf_counter()
        rows = list(store.text_rows())
        scan_s = time.perf_counter() - t0
        assert len(rows) == size
        t0 = time.perf_counter()
        retriever.lexical.replace_all(rows)  # = refresh_lexical() on open, the scan done apart
        index_s = time.perf_counter() - t0
        del rows
        refresh_s = scan_s + index_s
        retriever._lexical_built = True
        assert len(retriever.lexical) == size
        print(f"  BM25 build (refresh_lexical): {refresh_s:.2f} s = store scan {scan_s:.2f} s "
              f"+ tokenize/index {index_s:.2f} s", flush=True)

        collection = store.text_collection
        texts, vectors = corpus.queries(args.warmup + args.queries)
        n = max(args.candidates, args.top_k)

        def raw(i: int):
            return collection.query(query_embeddings=[vectors[i].tolist()], n_results=n,
                                    include=["documents", "metadatas", "distances"])

        def dense(i: int):
            return retriever.search(texts[i], top_k=args.top_k, candidates=args.candidates,
                                    query_embedding=vectors[i].tolist(), lexical=False)

        def hybrid(i: int):
            return retriever.search(texts[i], top_k=args.top_k, candidates=args.candidates,
                                    query_embedding=vectors[i].tolist())

        paths: list[tuple[str, Callable[[int], Any]]] = [("raw", raw), ("dense", dense), ("hybrid", hybrid)]
        for i in range(args.warmup):
            for _, fn in paths:
                fn(i)
        times: dict[str, list[float]] = {name: [] for name, _ in paths}
        steps: dict[str, list[float]] = {}
        agree = lexical_hits = 0
        for q in range(args.warmup, args.warmup + args.queries):
            rot = q % len(paths)
            got = {}
            for name, fn in paths[rot:] + paths[:rot]:  # rotate the order per query
                t0 = time.perf_counter()
                got[name] = fn(q)
                times[name].append(time.perf_counter() - t0)
            # Correctness: same index, so our dense top-k is raw's top-k.
            raw_top = got["raw"]["ids"][0][: args.top_k]
            agree += [h.id for h in got["dense"].hits] == raw_top
            lexical_hits += any(h.lexical_rank for h in got["hybrid"].hits)
            for key, value in got["hybrid"].timings_ms.items():
                steps.setdefault(key, []).append(value)
        if profile:
            profile_paths(paths, args.warmup, args.queries, root.name)
        # An acknowledged 32-chunk document goes into BM25 (on the ingest's thread, not a query's).
        new_texts = corpus.texts(size, size + 32)
        nodes = corpus.nodes(size, size + 32, new_texts, corpus.vectors(size, size + 32))
        store.add_text_nodes(nodes)
        rows = [(n.id_, t, n.ref_doc_id, {"file_name": n.metadata["file_name"]}) for n, t in zip(nodes, new_texts)]
        t0 = time.perf_counter()
        retriever.lexical.add(rows)
        update_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hybrid(args.warmup)
        stale_s = time.perf_counter() - t0
        print(f"  BM25 update for a 32-chunk document: {update_s * 1e3:.0f} ms; "
              f"next hybrid query {stale_s * 1e3:.1f} ms", flush=True)
        result = {
            "size": size, "queries": args.queries, "load_before": load,
            "build_add_text_nodes_s": build_s, "build_chunks_per_s": size / build_s,
            "bm25_scan_s": scan_s, "bm25_index_s": index_s, "bm25_refresh_lexical_s": refresh_s,
            "bm25_add_document_ms": update_s * 1e3, "hybrid_after_change_ms": stale_s * 1e3,
            "latency_ms": {name: summary_ms(t) for name, t in times.items()},
            "hybrid_steps_mean_ms": {k: statistics.fmean(v) for k, v in steps.items()},
            "dense_top_k_equals_raw": agree / args.queries,
            "hybrid_with_lexical_hit": lexical_hits / args.queries,
        }
        del retriever, store, collection, client
        return result
    finally:
        release_clients()
        shutil.rmtree(root, ignore_errors=True)


def profile_paths(paths, warmup: int, queries: int, label: str) -> None:
    import cProfile
    import io
    import pstats

    for name, fn in paths[1:]:
        prof = cProfile.Profile()
        prof.enable()
        for q in range(warmup, warmup + queries):
            fn(q)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print(f"\n--- cProfile: {name}, {queries} queries ({label}) ---\n{out.getvalue()}", flush=True)


# ----- 2. ingestion ----------------------------------------------------------------------
def bench_ingest(corpus: Corpus, total: int, batch: int) -> dict[str, Any]:
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    load = load_line(f"ingest batch={batch}")
    roots = [Path(tempfile.mkdtemp(prefix=f"mmchat-bench-ingest-{name}-")) for name in ("ours", "raw", "rawli")]
    try:
        _, store = new_store(roots[0])
        from mmchat.knowledge.store import open_client

        raw = raw_collection(open_client(roots[1]), "bench_text")
        raw_li = raw_collection(open_client(roots[2]), "bench_text")
        spent = {"ours": 0.0, "raw": 0.0, "raw_li_meta": 0.0}
        for number, start in enumerate(range(0, total, batch)):
            stop = min(total, start + batch)
            texts, vectors = corpus.texts(start, stop), corpus.vectors(start, stop)
            nodes = corpus.nodes(start, stop, texts, vectors)
            ids = [corpus.chunk_id(i) for i in range(start, stop)]
            embeddings = [v.tolist() for v in vectors]
            metadatas = [corpus.metadata(i) for i in range(start, stop)]
            li_metadatas = [node_to_metadata_dict(node, remove_text=True, flat_metadata=True) for node in nodes]

            def ours() -> None:
                store.add_text_nodes(nodes)

            def plain() -> None:
                raw.add(ids=ids, embeddings=embeddings, documents=texts, metadatas=metadatas)

            def plain_li() -> None:
                raw_li.add(ids=ids, embeddings=embeddings, documents=texts, metadatas=li_metadatas)

            order = [("ours", ours), ("raw", plain), ("raw_li_meta", plain_li)]
            rot = number % len(order)
            for name, fn in order[rot:] + order[:rot]:
                t0 = time.perf_counter()
                fn()
                spent[name] += time.perf_counter() - t0
        counts = {"ours": store.text_collection.count(), "raw": raw.count(), "raw_li_meta": raw_li.count()}
        assert set(counts.values()) == {total}, counts
        rates = {name: total / s for name, s in spent.items()}
        print(f"  batch {batch}: ours {rates['ours']:.0f}/s, raw {rates['raw']:.0f}/s, "
              f"raw+LlamaIndex metadata {rates['raw_li_meta']:.0f}/s", flush=True)
        return {"batch": batch, "chunks": total, "load_before": load, "seconds": spent, "chunks_per_s": rates,
                "ratio_ours_raw": rates["ours"] / rates["raw"]}
    finally:
        release_clients()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def time_query_embedding(sources: list[str], corpus: "Corpus", queries: int) -> dict[str, dict[str, float]]:
    """Per embedder, the latency of embedding one query (ms), on the benchmark's own query
    texts; sets DIM to the last embedder's width, so the store holds vectors of that size."""
    global DIM
    from mmchat.knowledge.embeddings import load_text_embedder

    out = {}
    for source in sources:
        embedder = load_text_embedder(source)
        texts, _ = corpus.queries(queries)
        for text in texts[:10]:
            embedder.get_query_embedding(text)
        spent = []
        for text in texts:
            t0 = time.perf_counter()
            vector = embedder.get_query_embedding(text)
            spent.append((time.perf_counter() - t0) * 1000)
        DIM = len(vector)
        out[source] = {"name": embedder.model_name, "dim": DIM, "p50": float(np.percentile(spent, 50)),
                       "p95": float(np.percentile(spent, 95)), "mean": float(np.mean(spent))}
        print(f"query embedding, {embedder.model_name} ({DIM}-d): p50 {out[source]['p50']:.2f} ms, "
              f"p95 {out[source]['p95']:.2f} ms", flush=True)
    return out


# ----- report ----------------------------------------------------------------------------
def print_report(retrieval: list[dict], ingest: list[dict], args: argparse.Namespace) -> None:
    if retrieval:
        print(f"\nretrieval, {args.queries} queries per size, top_k={args.top_k}, "
              f"candidates={args.candidates}, {DIM}-d random unit vectors; ms")
        print(f"{'N':>7} {'path':7} {'p50':>7} {'p95':>7} {'mean':>7} {'p95/raw':>8} {'mean/raw':>8}")
        for r in retrieval:
            lat = r["latency_ms"]
            for name in ("raw", "dense", "hybrid"):
                s = lat[name]
                print(f"{r['size']:>7} {name:7} {s['p50']:>7.2f} {s['p95']:>7.2f} {s['mean']:>7.2f} "
                      f"{s['p95'] / lat['raw']['p95']:>7.2f}x {s['mean'] / lat['raw']['mean']:>7.2f}x")
            steps = ", ".join(f"{k} {v:.2f}" for k, v in r["hybrid_steps_mean_ms"].items())
            print(f"{'':>7} hybrid steps (mean ms): {steps}; BM25 update for a 32-chunk document "
                  f"{r['bm25_add_document_ms']:.0f} ms, next query {r['hybrid_after_change_ms']:.1f} ms")
            print(f"{'':>7} build {r['build_chunks_per_s']:.0f} chunks/s; BM25 build {r['bm25_refresh_lexical_s']:.2f} s "
                  f"(scan {r['bm25_scan_s']:.2f} + tokenize/index {r['bm25_index_s']:.2f}); "
                  f"dense top-{args.top_k} == raw: {r['dense_top_k_equals_raw']:.0%}; load {r['load_before']:.2f}")
        for r in retrieval:
            lat = r["latency_ms"]
            if r["size"] >= 100000:
                p95 = lat["hybrid"]["p95"]
                print(f"goal hybrid p95 <= 25 ms at N={r['size']}: {p95:.1f} ms {'OK' if p95 <= 25 else 'MISSED'}")
            ratio = lat["dense"]["p95"] / lat["raw"]["p95"]
            print(f"goal dense <= 1.5x raw (p95) at N={r['size']}: {ratio:.2f}x {'OK' if ratio <= 1.5 else 'MISSED'}"
                  f"  (hybrid {lat['hybrid']['p95'] / lat['raw']['p95']:.2f}x: BM25 + fusion on top, no like-for-like peer)")
    if ingest:
        print(f"\ningestion, chunks/s ({ingest[0]['chunks']} chunks per path, fresh collections, alternated batches)")
        print(f"{'batch':>6} {'ours':>8} {'raw':>8} {'raw+LI meta':>12} {'ours/raw':>9}")
        for r in ingest:
            c = r["chunks_per_s"]
            ok = "OK" if r["ratio_ours_raw"] >= 0.8 else "MISSED"
            print(f"{r['batch']:>6} {c['ours']:>8.0f} {c['raw']:>8.0f} {c['raw_li_meta']:>12.0f} "
                  f"{r['ratio_ours_raw']:>8.2f}x  (goal >= 0.8x) {ok}")


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    args = parse_args(argv)
    started = time.time()
    load = load_line("start")
    corpus = Corpus(args.vocab, args.words, args.seed)
    embedding = time_query_embedding(args.embedders, corpus, args.queries)
    retrieval = []
    for index, size in enumerate(args.sizes):
        retrieval.append(bench_retrieval(corpus, size, args, args.profile and index == len(args.sizes) - 1))
    ingest = [bench_ingest(corpus, args.ingest_chunks, batch) for batch in args.ingest_batches] if args.ingest_chunks else []
    load_after = load_line("end")
    print_report(retrieval, ingest, args)
    for source, timing in embedding.items():
        for r in retrieval:
            hybrid = r["latency_ms"]["hybrid"]["mean"]
            print(f"query latency with {timing['name']} at N={r['size']}: embed {timing['mean']:.2f} + hybrid "
                  f"{hybrid:.2f} = {timing['mean'] + hybrid:.2f} ms (mean; hybrid measured at {DIM}-d)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"knowledge-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "args": vars(args), "cores": os.cpu_count(), "load_start": load, "load_end": load_after,
        "seconds": time.time() - started, "retrieval": retrieval, "ingest": ingest, "query_embedding": embedding,
    }, indent=1))
    print(f"\nwrote {path} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
