"""A chunk cut from the middle of a table keeps the table's header (mmchat.knowledge.tables):
the helpers on their own, then through a real ingest into Chroma and a search."""

from __future__ import annotations

from mmchat.knowledge.tables import table_spans, with_table_header

TEXT_TABLE = (
    "Results on 12,000 invoices:\n\n"
    "System             | All 8 fields | Cost per 1,000 pages\n"
    "Tesseract 5.3      | 61.3%        | EUR 0.40\n"
    "PP-OCRv4 + rules   | 70.2%        | EUR 0.55\n"
    "\nThe costs are our own server costs.\n"
)
MARKDOWN_TABLE = "Intro.\n\n| rank | params |\n|---|---|\n| 4 | 32768 |\n| 8 | 65536 |\n\nAfter.\n"


def test_tables_are_found_with_their_header_and_markdown_rule():
    (start, header_end, end), = table_spans(TEXT_TABLE)
    assert TEXT_TABLE[start:header_end].startswith("System") and TEXT_TABLE[start:header_end].endswith("pages")
    assert TEXT_TABLE[start:end].endswith("EUR 0.55")
    (start, header_end, end), = table_spans(MARKDOWN_TABLE)
    assert MARKDOWN_TABLE[start:header_end] == "| rank | params |\n|---|---|"
    # One line with pipes, or prose, is no table.
    assert table_spans("a | b | c\n\nplain text\nx | y\n") == []


def test_a_chunk_starting_inside_a_table_gets_the_header_and_its_whole_first_row():
    spans = table_spans(TEXT_TABLE)
    cut = TEXT_TABLE.index("3      | 61.3%")  # mid-row, mid-number: where the splitter cut it
    chunk = TEXT_TABLE[cut:]
    fixed = with_table_header(TEXT_TABLE, spans, cut, chunk)
    assert fixed.splitlines()[0].startswith("System") and "Cost per 1,000 pages" in fixed
    assert fixed.splitlines()[1].startswith("Tesseract 5.3")
    assert fixed.endswith(chunk)
    # Chunks that start before the table, or after it, are left as they are.
    assert with_table_header(TEXT_TABLE, spans, 0, TEXT_TABLE) == TEXT_TABLE
    after = TEXT_TABLE.index("The costs")
    assert with_table_header(TEXT_TABLE, spans, after, TEXT_TABLE[after:]) == TEXT_TABLE[after:]
    md_spans = table_spans(MARKDOWN_TABLE)
    row = MARKDOWN_TABLE.index("| 8 |")
    assert with_table_header(MARKDOWN_TABLE, md_spans, row, MARKDOWN_TABLE[row:]).startswith(
        "| rank | params |\n|---|---|\n| 8 |")


def test_every_chunk_of_a_long_table_names_its_columns_and_a_row_is_found_by_them(make_knowledge, tmp_path):
    rows = "\n".join(f"model-{i:02d}         | {50 + i}.{i % 10}%        | EUR {i}.{i % 7}0" for i in range(40))
    doc = tmp_path / "benchmark.txt"
    doc.write_text("Benchmark of forty models.\n\nSystem           | Exact match  | Cost per 1,000 pages\n"
                   + rows + "\n\nAll costs are list prices.\n", encoding="utf-8")
    kb = make_knowledge(seed_demo=False, chunk_size=64, chunk_overlap=8)
    assert not kb.ingest([doc]).failed
    chunks = [text for _, text, _, _ in kb.store.text_rows()]  # as stored in Chroma
    with_rows = [c for c in chunks if "model-" in c]
    assert len(with_rows) > 3  # the table was really split
    for chunk in with_rows:
        assert "System           | Exact match  | Cost per 1,000 pages" in chunk, chunk[:120]
        first_row = next(line for line in chunk.splitlines() if "model-" in line)
        assert first_row.startswith("model-")  # no row begins mid-way
    hits = kb.search("model-33 cost per 1,000 pages", top_k=3, image_top_k=0, min_relevance=0.0).hits
    assert "model-33" in hits[0].text and "Cost per 1,000 pages" in hits[0].text
