"""Keep a table's header with every chunk of it.

The splitter cuts a long pipe table (Markdown, or the `a | b | c` rows plain text writes) like
any other text, so a chunk that starts inside the table holds rows without the header that
names their columns ("70.2% | EUR 0.55" without "All 8 fields | Cost per 1,000 pages"), and
can begin in the middle of a row, even of a number. `with_table_header` gives such a chunk
its whole first row back and the table's header line in front, so the chunk says what its
numbers are to BM25, to the embedder and to the reader of the cited passage.

It does not split, parse cell contents or touch chunks outside tables.
"""

from __future__ import annotations

import re

_ROW = re.compile(r"^[^\n|]*\|[^\n|]*\|.*$", re.MULTILINE)  # two or more cell separators
_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")  # Markdown's |---|---|


def table_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, header end, end) of each pipe table in `text`: runs of two or more lines with at
    least two `|` each; the header is the first line (and Markdown's rule line under it)."""
    spans: list[tuple[int, int, int]] = []
    rows = list(_ROW.finditer(text))
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1].start() == rows[j].end() + 1:  # the next line
            j += 1
        if j > i:
            header_end = rows[i].end()
            if _RULE.match(rows[i + 1].group()):
                header_end = rows[i + 1].end()
            spans.append((rows[i].start(), header_end, rows[j].end()))
        i = j + 1
    return spans


def with_table_header(text: str, spans: list[tuple[int, int, int]], start: int, chunk: str) -> str:
    """`chunk` (found at `start` in `text`) with its table's header in front when it starts
    after that header inside the table, from the start of the row it cuts into."""
    for table_start, header_end, table_end in spans:
        if header_end < start < table_end:
            row_start = text.rfind("\n", 0, start) + 1
            return text[table_start:header_end] + "\n" + text[row_start:start] + chunk
    return chunk
