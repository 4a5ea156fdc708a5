"""Maintainer script: regenerate the binary files of the demo corpus in this folder.

    python knowledge/demo/build_demo.py

It writes `llava-overview.pdf` (with fpdf2) and `rag-howto.docx` (with python-docx) next to
itself. Both libraries come with the `test` extra (`pip install -e .[test]`); the app itself
never imports this script. Its outputs are committed, so run it only after editing the text
below, and commit the regenerated files together with the change.

The output is as deterministic as the libraries allow: fixed creation dates and document
metadata, the photo re-encoded with fixed settings, fixed timestamps inside the DOCX zip.
The PDF uses fpdf2's core Helvetica font, which only covers Latin-1, so every string is
passed through `latin1()` (curly quotes and dashes become ASCII; anything else fails loudly).
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAT_PHOTO = HERE.parent / "images" / "cat.png"
PDF_OUT = HERE / "llava-overview.pdf"
DOCX_OUT = HERE / "rag-howto.docx"
FIXED_DATE = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
AUTHOR = "mmchat project"

_ASCII = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": " - ", "\u2026": "...", "\u00a0": " ", "\u2212": "-",
}


def latin1(text: str) -> str:
    """Make `text` printable with a core PDF font: ASCII punctuation, Latin-1 otherwise."""
    for src, dst in _ASCII.items():
        text = text.replace(src, dst)
    text.encode("latin-1")  # raises on anything a core font cannot show
    return text


# --------------------------------------------------------------------------------------
# llava-overview.pdf: three pages, one section list per page (explicit page breaks so the
# page a fact lands on does not depend on line wrapping).
# --------------------------------------------------------------------------------------

PDF_TITLE = "LLaVA in brief: how a chat model learns to see"

PAGE1 = [
    ("What LLaVA is", [
        "LLaVA (Large Language and Vision Assistant) is an open vision-language model "
        "introduced by Haotian Liu, Chunyuan Li, Qingyang Wu and Yong Jae Lee in 2023. It "
        "answers free-form questions about an image in the style of a chat assistant. Its "
        "recipe is deliberately simple: take a vision encoder that already understands "
        "images, take a language model that already understands instructions, and teach a "
        "small connector to translate between the two.",
    ]),
    ("Three parts", [
        "1. Vision encoder. LLaVA uses the image tower of OpenAI's CLIP, in the ViT-L/14 "
        "variant: a Vision Transformer that cuts the picture into square patches of 14 x 14 "
        "pixels and turns each patch into a 1024-dimensional feature vector. CLIP was trained "
        "to match images with their captions, so these features already carry meaning. The "
        "encoder stays frozen during LLaVA's training.",
        "2. Projector. A small trainable network maps every patch feature into the word "
        "embedding space of the language model (4096 dimensions for a 7B model). The first "
        "LLaVA used a single linear layer; LLaVA-1.5 replaced it with a two-layer MLP, which "
        "noticeably improved its answers.",
        "3. Language model. A decoder-only chat model, Vicuna in the original releases, reads "
        "the projected image features as if they were words and writes the answer token by "
        "token.",
    ]),
]

PAGE1_CAPTION = (
    "Figure 1. The cat photo shipped in knowledge/images/cat.png (scikit-image's 'chelsea'). "
    "Asked 'What animal is this?', a LLaVA model answers from the patch features of this "
    "image, not from a label."
)

PAGE2 = [
    ("How an image becomes tokens", [
        "The vision encoder does not produce a single vector per image. LLaVA keeps the grid "
        "of patch features from the encoder's second-to-last layer, so the language model "
        "sees one vector per patch. LLaVA-1.5 feeds the encoder images of 336 x 336 pixels; "
        "336 / 14 = 24 patches per side, so every image becomes a grid of 24 x 24 = 576 "
        "image tokens. The original LLaVA used 224-pixel inputs, giving 16 x 16 = 256 image "
        "tokens.",
        "In the text prompt the image is represented by a single placeholder. A LLaVA-1.5 "
        "prompt looks like 'USER: <image>\\nWhat animal is this? ASSISTANT:'. Before the "
        "language model runs, the placeholder is expanded into the 576 projected image "
        "features, so a one-image question already occupies about 600 positions of the "
        "model's context window. Several images cost 576 positions each.",
    ]),
    ("Stage 1: feature alignment pre-training", [
        "The first training stage teaches the projector to speak the language model's "
        "language. The vision encoder and the language model are both frozen; only the "
        "projector is trained. The data are plain image-caption pairs: the original LLaVA "
        "used 595K pairs filtered from the CC3M dataset, LLaVA-1.5 a set of about 558K "
        "captioned images. The task is simply to reproduce the caption of the image, which "
        "aligns the projected patch features with the words that describe them.",
    ]),
    ("Stage 2: visual instruction tuning", [
        "The second stage turns the aligned model into an assistant. The vision encoder stays "
        "frozen, while the projector and the language model are both updated. The original "
        "LLaVA used LLaVA-Instruct-158K: about 158K instruction-following examples that a "
        "text-only GPT-4 wrote from image captions and object boxes, split into 58K "
        "conversations, 23K detailed descriptions and 77K complex reasoning questions. The "
        "loss is computed only on the assistant's answers, never on the question or the "
        "image tokens. Adapter methods such as LoRA can replace full fine-tuning of the "
        "language model in this stage.",
    ]),
]

PAGE3 = [
    ("What changed in LLaVA-1.5", [
        "LLaVA-1.5 (2023) kept the design and changed a few well-chosen parts: the CLIP "
        "ViT-L/14 encoder at 336-pixel resolution instead of 224, the two-layer MLP "
        "projector with a GELU activation instead of the linear layer, and academic visual "
        "question answering data added to the instruction mix, with prompts such as "
        "'Answer the question using a single word or phrase.' so the model learns when a "
        "short answer is wanted. The full recipe uses about 1.2 million publicly available "
        "examples (558K for pre-training and a 665K instruction mix) and trains in roughly "
        "one day on a single node with eight A100 GPUs.",
    ]),
    ("Running a 7B model on a consumer GPU", [
        "A 7-billion-parameter language model stored in 16-bit precision needs about 14 GB "
        "for its weights alone (7 billion x 2 bytes), more than most consumer graphics "
        "cards offer. Loading it in 4 bits with bitsandbytes changes the picture: in the "
        "NF4 format with double quantization each weight costs a little over half a byte, "
        "so the language model shrinks to roughly 3.5 to 4 GB.",
        "The quantized blocks are expanded to bfloat16 on the fly for each matrix "
        "multiplication, so the arithmetic still happens in 16 bits. The vision tower "
        "(about 0.3 billion parameters), the projector and the output layer are small and "
        "sensitive, so they are usually left unquantized. The result fits in about 4 to 5 "
        "GB of GPU memory and runs on an 8 GB card; this app's llava-1.5-7b-nf4 preset "
        "loads the model exactly this way. The price is a small loss of accuracy and some "
        "extra time for dequantization.",
    ]),
    ("Further reading", [
        "Liu, Li, Wu and Lee, 'Visual Instruction Tuning' (NeurIPS 2023). Liu, Li, Li and "
        "Lee, 'Improved Baselines with Visual Instruction Tuning' (2023). Radford et al., "
        "'Learning Transferable Visual Models From Natural Language Supervision' (CLIP, "
        "2021). Dettmers et al., 'QLoRA: Efficient Finetuning of Quantized LLMs' (2023).",
    ]),
]


def _cat_jpeg() -> io.BytesIO:
    """The repo's cat photo, re-encoded as a small baseline JPEG with fixed settings."""
    from PIL import Image

    with Image.open(CAT_PHOTO) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85, optimize=False, progressive=False)
    buf.seek(0)
    return buf


def build_pdf(path: Path = PDF_OUT) -> Path:
    from fpdf import FPDF

    class Doc(FPDF):
        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("helvetica", size=8)
            self.set_text_color(110)
            self.cell(0, 10, f"LLaVA overview - page {self.page_no()} of {{nb}}", align="C")
            self.set_text_color(0)

    pdf = Doc(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(PDF_TITLE)
    pdf.set_author(AUTHOR)
    pdf.set_subject("LLaVA: CLIP vision encoder, projector, two-stage training, 4-bit loading")
    pdf.set_creator("knowledge/demo/build_demo.py")
    pdf.set_lang("en")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)

    def sections(items) -> None:
        for heading, paragraphs in items:
            pdf.set_font("helvetica", style="B", size=13)
            pdf.multi_cell(0, 7, latin1(heading), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
            pdf.set_font("helvetica", size=11)
            for para in paragraphs:
                pdf.multi_cell(0, 5.6, latin1(para), new_x="LMARGIN", new_y="NEXT")
                pdf.ln(2.5)
            pdf.ln(1.5)

    # page 1: title, architecture, the photo
    pdf.add_page()
    pdf.set_font("helvetica", style="B", size=18)
    pdf.multi_cell(0, 9, latin1(PDF_TITLE), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", style="I", size=10)
    pdf.multi_cell(0, 6, "A short illustrated overview for the mmchat demo corpus.",
                   new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    sections(PAGE1)
    width = 95
    pdf.image(_cat_jpeg(), x=(pdf.w - width) / 2, w=width, alt_text="A tabby cat (chelsea)")
    pdf.ln(2)
    pdf.set_font("helvetica", style="I", size=9)
    pdf.multi_cell(0, 4.8, latin1(PAGE1_CAPTION), new_x="LMARGIN", new_y="NEXT")
    first_page = pdf.page_no()

    # page 2: image tokens and the two training stages
    pdf.add_page()
    sections(PAGE2)
    second_page = pdf.page_no()

    # page 3: LLaVA-1.5 and 4-bit loading
    pdf.add_page()
    sections(PAGE3)
    if (first_page, second_page, pdf.page_no()) != (1, 2, 3):
        raise RuntimeError("the PDF text overflowed a page; shorten it so each part fits one page")

    pdf.output(str(path))
    return path


# --------------------------------------------------------------------------------------
# rag-howto.docx
# --------------------------------------------------------------------------------------

DOCX_TITLE = "How retrieval-augmented generation works in mmchat"

DOCX_BODY: list[tuple[str, str]] = [
    ("p", "A language model only knows what was in its training data, and it cannot say where "
          "a fact came from. Retrieval-augmented generation (RAG) fixes both problems: before "
          "the model answers, the app looks up the passages of your own documents that are "
          "most relevant to the question, puts them into the prompt, and asks the model to "
          "answer from them and to cite them. This note walks through each step."),
    ("h", "1. Loading and chunking"),
    ("p", "Documents dropped into the knowledge base (Markdown, plain text, HTML, PDF and Word "
          "files) are converted to plain text, page by page for PDFs so that a citation can "
          "point to a page. Whole documents are too long to place in a prompt, so the text is "
          "split into chunks of a few hundred tokens. Neighbouring chunks overlap: the end of "
          "one chunk is repeated at the start of the next. Without the overlap, a sentence "
          "that happens to fall on a boundary would be cut in half and neither chunk would "
          "contain the whole statement. Chunks are split at paragraph and sentence boundaries "
          "where possible."),
    ("h", "2. Two retrievers that fail differently"),
    ("p", "Dense retrieval embeds every chunk with a sentence-embedding model (for example "
          "all-MiniLM-L6-v2, which produces 384-dimensional vectors) and embeds the question "
          "the same way; the closest vectors by cosine similarity win. Dense retrieval "
          "understands paraphrases: a question about \"memory savings\" finds a chunk that "
          "talks about \"using less VRAM\"."),
    ("p", "BM25 is a classic lexical ranking function. It scores chunks by the words they share "
          "with the question, giving more weight to rare words and less to long chunks. It is "
          "strong exactly where embeddings are weak: part numbers, error codes, function "
          "names and other exact identifiers. Chinese and Japanese text has no spaces between "
          "words, so the app indexes it as overlapping pairs of characters (bigrams) next to "
          "ordinary word tokens."),
    ("h", "3. Reciprocal rank fusion"),
    ("p", "The two ranked lists are merged with reciprocal rank fusion (RRF). Each chunk "
          "receives 1 / (k + rank) from every list it appears in, with the constant k usually "
          "set to 60, and the sums are sorted. A chunk ranked first by BM25 and third by the "
          "dense retriever scores 1/61 + 1/63, about 0.0323, and beats a chunk that only one "
          "retriever ranked first (1/61, about 0.0164). RRF uses ranks, not raw scores, so it "
          "needs no tuning to make cosine similarities and BM25 scores comparable."),
    ("h", "4. Numbered citations"),
    ("p", "The top few chunks are placed in the prompt as numbered sources, [1], [2], [3] and so "
          "on, each labelled with its file name (and page, for PDFs). The model is instructed "
          "to answer only from these sources and to mark every claim with the number of the "
          "source it came from, for example \"LoRA trains two small matrices [2].\" Under the "
          "answer the app lists the sources with the same numbers, so a reader can check each "
          "claim. If nothing relevant was retrieved, the model should say so instead of "
          "guessing."),
    ("h", "5. Chroma as the vector store"),
    ("p", "Chunk texts, their embeddings and their metadata (file, page, position) are stored "
          "in Chroma, an open-source vector database, through LlamaIndex. In embedded mode "
          "Chroma runs inside the app's own process and persists to a folder on disk, "
          "knowledge/.chroma, which is created at run time and ignored by git; nothing else "
          "needs to be installed. In server mode the app connects to a separately running "
          "Chroma server over HTTP (Chroma's default port is 8000), which lets several app "
          "instances share one index. The app always computes embeddings itself and never "
          "relies on Chroma's built-in default embedding function."),
    ("h", "6. Tips"),
    ("p", "Ask specific questions: retrieval works on the words and meaning of the question. "
          "If an answer cites the wrong source, look at the retrieved chunks first; most RAG "
          "errors are retrieval errors, not generation errors. Re-index after editing a "
          "document so that stale chunks disappear."),
]


def _fixed_zip(data: bytes) -> bytes:
    """Rewrite a DOCX (zip) with fixed member timestamps, keeping member order."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=(2025, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            dst.writestr(member, src.read(info.filename))
    return out.getvalue()


def build_docx(path: Path = DOCX_OUT) -> Path:
    import docx

    document = docx.Document()
    props = document.core_properties
    props.title = DOCX_TITLE
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.subject = "RAG in mmchat: chunking, hybrid retrieval, RRF, citations, Chroma"
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    props.language = "en-US"

    document.add_heading(DOCX_TITLE, level=0)
    for kind, text in DOCX_BODY:
        if kind == "h":
            document.add_heading(text, level=1)
        else:
            document.add_paragraph(text)

    buf = io.BytesIO()
    document.save(buf)
    path.write_bytes(_fixed_zip(buf.getvalue()))
    return path


def main() -> None:
    for built in (build_pdf(), build_docx()):
        print(f"wrote {built.relative_to(HERE.parent.parent)} ({built.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
