"""Retrieval quality on held-out question sets: dense vs BM25 vs hybrid, per language split.

`python -m bench retrieval-eval [--sets eval old cross] [--embedders auto ...] [--top-k 5] [--no-calibration]`

For each embedder (default: the app's, `auto`; `all` for every bundled one: all-MiniLM-L6-v2,
multilingual-e5-small, USE multilingual) and each set, the documents are ingested into a fresh
temporary `KnowledgeBase` (the object the app uses, with an embedded Chroma store), and every
question is asked three ways:

- dense: `HybridRetriever.search(..., lexical=False)` (LlamaIndex over Chroma only);
- bm25: the BM25 index alone (`LexicalIndex.search`), its chunks' texts from the index;
- hybrid: `KnowledgeBase.search(..., min_relevance=0)`, what a chat turn gets with the
  relevance floor lifted, so the ranking itself is measured (the floor is reported apart).

Sets:
- `eval`: `tests/fixtures/rag_eval` (frozen; see its README). A hit is a retrieved chunk of
  the question's document whose text matches the question's `answer_regex`.
- `old`: `tests/fixtures/rag` (the older, short-document fixture). A hit is a chunk of the
  question's document (that fixture has one fact per short document).
- `cross`: `tests/fixtures/rag_eval_v2` (frozen; Chinese documents asked in English and
  English documents asked in Chinese as well as each in its own language), hit as for `eval`.

Reports hit@1, hit@5 (at `--top-k`) and MRR (over the top k) per split (en→en, zh→zh, en→zh,
zh→en, overall) as a markdown table, the embedder's measured profile (`EmbedderProfile`), and the mean per-query latency of each path. With calibration
on (the default) it also prints the relevance-floor figures: the relevance of each answer
chunk, the best relevance for each off-topic question (`rag_eval/off_topic.json`) against
the eval set and against the shipped demo corpus (`knowledge/demo` + `knowledge/images`),
and how many of each a floor keeps. Results go to `bench/results/retrieval-eval-<time>.json`.

It measures; it changes nothing in the app and tunes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETS = {"eval": ROOT / "tests" / "fixtures" / "rag_eval", "old": ROOT / "tests" / "fixtures" / "rag",
        "cross": ROOT / "tests" / "fixtures" / "rag_eval_v2"}  # cross-lingual both ways (issue 14)
DEMO = ROOT / "knowledge"
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("dense", "bm25", "hybrid")


def split_of(question: dict[str, Any]) -> str:
    doc_lang = question.get("doc_lang") or question["lang"]
    return f"{question['lang']}→{doc_lang}"


def load_questions(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "questions.json").read_text(encoding="utf-8"))


def is_hit(question: dict[str, Any], file_name: str, text: str) -> bool:
    if file_name != question["doc"]:
        return False
    pattern = question.get("answer_regex")
    return bool(re.search(pattern, text)) if pattern else True


def open_kb(root: Path, embedder: Any, encoder: Any = None, **config: Any):
    from mmchat.config import KnowledgeConfig
    from mmchat.knowledge.base import KnowledgeBase

    return KnowledgeBase(KnowledgeConfig(path=str(root), **config), encoder=encoder, text_embedder=embedder)


def ingest(kb: Any, files: list[Path]) -> None:
    report = kb.ingest(files)
    if report.failed:
        raise SystemExit(f"could not index: {report.failed}")


def ranked(kb: Any, mode: str, query: str, k: int) -> list[tuple[str, str]]:
    """(file name, text) of the top k chunks for `query` by one path."""
    if mode == "dense":
        return [(h.file_name, h.text) for h in kb.retriever.search(query, top_k=k, lexical=False).hits]
    if mode == "bm25":
        kb.retriever.refresh_lexical()
        out = []
        for hit in kb.retriever.lexical.search(query, k):
            row = kb.retriever.lexical.row(hit.id)
            out.append((row.metadata.get("file_name", ""), row.text))
        return out
    return [(h.file_name, h.text) for h in kb.search(query, top_k=k, image_top_k=0, min_relevance=0.0).hits]


def evaluate(kb: Any, questions: list[dict[str, Any]], k: int) -> dict[str, Any]:
    per_mode: dict[str, list[int | None]] = {m: [] for m in MODES}  # rank of the first hit
    latency: dict[str, list[float]] = {m: [] for m in MODES}
    for q in questions:
        for mode in MODES:
            started = time.perf_counter()
            got = ranked(kb, mode, q["question"], k)
            latency[mode].append(time.perf_counter() - started)
            rank = next((i for i, (name, text) in enumerate(got, start=1) if is_hit(q, name, text)), None)
            per_mode[mode].append(rank)
    splits = sorted({split_of(q) for q in questions}, key=lambda s: (s != "en→en", s != "zh→zh", s))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for mode in MODES:
        table[mode] = {}
        for split in splits + ["overall"]:
            ranks = [r for q, r in zip(questions, per_mode[mode]) if split == "overall" or split_of(q) == split]
            table[mode][split] = {
                "n": len(ranks),
                "hit@1": sum(r == 1 for r in ranks if r) / len(ranks),
                f"hit@{k}": sum(1 for r in ranks if r) / len(ranks),
                "mrr": sum(1 / r for r in ranks if r) / len(ranks),
            }
    misses = {m: [q["question"] for q, r in zip(questions, per_mode[m]) if r is None] for m in MODES}
    return {
        "table": table, "splits": splits, "misses": misses,
        "ranks": {m: per_mode[m] for m in MODES},
        "latency_ms": {m: statistics.fmean(v) * 1e3 for m, v in latency.items()},
    }


def markdown_table(name: str, result: dict[str, Any], k: int) -> str:
    splits = result["splits"] + ["overall"]
    lines = [f"**{name}** (hit@1 / hit@{k} / MRR)", "",
             "| retriever | " + " | ".join(f"{s} (n={result['table']['dense'][s]['n']})" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for mode in MODES:
        cells = []
        for s in splits:
            row = result["table"][mode][s]
            cells.append(f"{row['hit@1']:.2f} / {row[f'hit@{k}']:.2f} / {row['mrr']:.2f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("mean latency per query (ms): " + ", ".join(f"{m} {v:.1f}" for m, v in result["latency_ms"].items()))
    for mode in MODES:
        if result["misses"][mode]:
            lines.append(f"- {mode} misses at {k}: " + "; ".join(result["misses"][mode]))
    return "\n".join(lines)


# ----- relevance floor -------------------------------------------------------------------
def answer_relevances(kb: Any, questions: list[dict[str, Any]], k: int) -> list[float | None]:
    """The relevance of the best-ranked answer chunk per question (None: not in the top k)."""
    out: list[float | None] = []
    for q in questions:
        hits = kb.search(q["question"], top_k=k, image_top_k=0).hits
        out.append(next((h.relevance for h in hits if is_hit(q, h.file_name, h.text)), None))
    return out


def best_relevances(kb: Any, questions: list[dict[str, Any]]) -> list[float]:
    return [kb.search(q["question"], top_k=5, image_top_k=0).best_relevance for q in questions]


def calibration(kb: Any, demo_kb: Any, questions: list[dict[str, Any]], off_topic: list[dict[str, Any]],
                k: int, floor: float) -> dict[str, Any]:
    answers = answer_relevances(kb, questions, k)
    found = sorted(a for a in answers if a is not None)
    off_eval = best_relevances(kb, off_topic)
    off_demo = best_relevances(demo_kb, off_topic)
    # Images the demo corpus would show for each off-topic question (text→image, at the
    # encoder's image_min_score), as "file score".
    off_images = [[f"{h.file_name} {h.score:.2f}" for h in demo_kb.search(q["question"], top_k=5).images]
                  for q in off_topic]

    def quantiles(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        pick = lambda p: values[min(len(values) - 1, int(p * (len(values) - 1) + 0.5))]  # noqa: E731
        return {"min": values[0], "p05": pick(0.05), "p25": pick(0.25), "median": pick(0.5), "max": values[-1]}

    return {
        "floor": floor,
        "answers": answers,
        "answer_quantiles": quantiles(found) if found else {},
        "answers_kept": sum(a >= floor for a in found) / max(1, len(found)),
        "answers_found": len(found), "questions": len(questions),
        "off_topic": [q["question"] for q in off_topic],
        "off_topic_eval": off_eval, "off_topic_demo": off_demo, "off_topic_demo_images": off_images,
        "off_topic_eval_refused": sum(v < floor for v in off_eval) / len(off_eval),
        "off_topic_demo_refused": sum(v < floor for v in off_demo) / len(off_demo),
    }


def print_calibration(c: dict[str, Any]) -> None:
    floor = c["floor"]
    print(f"\n**relevance floor {floor:.2f}**: answer chunks found in the top k: {c['answers_found']}/{c['questions']}; "
          f"kept (relevance >= floor): {c['answers_kept']:.1%}")
    if c["answer_quantiles"]:
        print("answer-chunk relevance: " + ", ".join(f"{k} {v:.3f}" for k, v in c["answer_quantiles"].items()))
    print(f"off-topic refused (best relevance < floor): eval corpus {c['off_topic_eval_refused']:.0%}, "
          f"demo corpus {c['off_topic_demo_refused']:.0%}")
    print("| off-topic question | best relevance (eval) | best relevance (demo) | demo images shown |\n|---|---|---|---|")
    for q, a, b, images in zip(c["off_topic"], c["off_topic_eval"], c["off_topic_demo"], c["off_topic_demo_images"]):
        print(f"| {q} | {a:.3f}{' (kept)' if a >= floor else ''} | {b:.3f}{' (kept)' if b >= floor else ''} "
              f"| {', '.join(images) or '-'} |")


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    parser = argparse.ArgumentParser(prog="python -m bench retrieval-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["eval", "old"])
    parser.add_argument("--embedders", nargs="+", default=["auto"],
                        help="text embedders to compare ('auto', 'all', or sources such as builtin:use-multilingual)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--no-calibration", action="store_true", help="skip the relevance-floor figures")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from mmchat.knowledge.embeddings import BUNDLED_EMBEDDERS, load_text_embedder
    from mmchat.knowledge.retrieval import profile_of

    started = time.time()
    sources = list(BUNDLED_EMBEDDERS) if args.embedders == ["all"] else args.embedders
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="mmchat-retrieval-eval-"))
    try:
        for number, source in enumerate(sources):
            embedder = load_text_embedder(source)
            profile = profile_of(embedder)
            print(f"## {embedder.model_name} ({source}): cosine unrelated {profile.unrelated:.3f}, "
                  f"paraphrase {profile.related:.3f}, CJK trust {profile.cjk_trust:.2f}\n", flush=True)
            for name in args.sets:
                folder = SETS[name]
                kb = open_kb(tmp / f"{number}-{name}", embedder, min_relevance=0.0)
                ingest(kb, sorted(p for p in (folder / "docs").iterdir() if p.is_file()))
                questions = load_questions(folder)
                result = evaluate(kb, questions, args.top_k)
                result["chunks"] = kb.counts()["chunks"]
                result["profile"] = vars(profile)
                results[f"{source}/{name}"] = result
                print(markdown_table(f"{name}: {folder.relative_to(ROOT)} ({result['chunks']} chunks, "
                                     f"{len(questions)} questions), {embedder.model_name}", result, args.top_k)
                      + "\n", flush=True)
                if name == "eval" and not args.no_calibration:
                    results[f"{source}/calibration"] = run_calibration(
                        tmp / str(number), embedder, kb, questions, folder, args.top_k)
    finally:
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"retrieval-eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1, ensure_ascii=False))
    print(f"wrote {path} ({time.time() - started:.0f} s)")
    return 0


def run_calibration(tmp: Path, embedder: Any, kb: Any, questions: list[dict[str, Any]], folder: Path,
                    k: int) -> dict[str, Any]:
    from mmchat.config import EncoderConfig, KnowledgeConfig
    from mmchat.vision import load_image_encoder

    encoder = load_image_encoder(EncoderConfig(kind="standin"),
                                 cache_dir=Path(os.environ.get("MMCHAT_CACHE_DIR", "~/.cache/mmchat")).expanduser())
    demo_kb = open_kb(tmp / "demo", embedder, encoder=encoder, min_relevance=0.0)
    demo_kb.seed_demo(DEMO)
    off_topic = json.loads((folder / "off_topic.json").read_text(encoding="utf-8"))
    c = calibration(kb, demo_kb, questions, off_topic, k, KnowledgeConfig().min_relevance)
    print_calibration(c)
    return c


if __name__ == "__main__":
    raise SystemExit(main())
