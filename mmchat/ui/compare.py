"""The Compare tab: one prompt (and optionally a photo) answered by 2–4 adapters side by side.

It opens with the shipped cat photo and "What animal is this?", base and the first two
adapters ticked, so one click shows how they differ. Columns are chosen from `base` and the
loaded adapters; every column uses the same settings
(greedy by default) and streams; under each, time to first token, tokens/s and tokens; below,
a word-level diff of each column against the first. The engine is `mmchat.compare`; this
module lays out and renders. `/compare` is API-callable and also returns the figures as JSON.
Imports no torch.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from typing import Any

import gradio as gr

from mmchat.adapters.host import BASE
from mmchat.errors import UserFacingError
from mmchat.ui.chat import EXAMPLE_DIR
from mmchat.ui.i18n import t, ui
from mmchat.ui.messages import localize
from mmchat.ui.tabs import AppTabs, Tab

log = logging.getLogger(__name__)

MAX_COLUMNS = 4
DEFAULT_PROMPT = "What animal is this?"


def column_markdown(column: Any) -> str:
    """One column: its adapter, its answer so far and, once it has them, its figures."""
    stats = column.stats
    figures = []
    if stats.time_to_first_token_s is not None:
        figures.append(t("trace.first_token", s=f"{stats.time_to_first_token_s:.2f}"))
    if column.done:
        figures += [f"{stats.tokens_per_s:.1f} tok/s", t("trace.tokens", n=stats.output_tokens)]
        if stats.finish_reason == "length":
            figures.append(t("trace.hit_max"))
        elif stats.finish_reason == "cancelled":
            figures.append(t("trace.stopped"))
    text = column.text or ("…" if not column.done else t("compare.empty"))
    return f"**{column.adapter}**\n\n{text}\n\n<sub>{' · '.join(figures)}</sub>"


def word_diff(first: str, other: str) -> list[tuple[str, str | None]]:
    """`other` against `first`, word by word: ("word", None) kept, "+" added, "-" removed."""
    a, b = first.split(), other.split()
    out: list[tuple[str, str | None]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append((" ".join(a[i1:i2]) + " ", None))
            continue
        if i2 > i1:
            out.append((" ".join(a[i1:i2]) + " ", "-"))
        if j2 > j1:
            out.append((" ".join(b[j1:j2]) + " ", "+"))
    return out


def figures_json(columns: list[Any]) -> list[dict[str, Any]]:
    return [
        {"adapter": c.adapter, "text": c.text, "done": c.done, "output_tokens": c.stats.output_tokens,
         "prompt_tokens": c.stats.prompt_tokens, "time_to_first_token_s": c.stats.time_to_first_token_s,
         "tokens_per_s": round(c.stats.tokens_per_s, 2), "finish_reason": c.stats.finish_reason}
        for c in columns
    ]


class CompareTab(Tab):
    title, tab_id = "tab.compare", "compare"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self._stops: dict[str, threading.Event] = {}

    def column_choices(self) -> list[str]:
        registry = self.runtime.adapters
        return registry.names() if registry is not None else [BASE]

    def default_columns(self) -> list[str]:
        return self.column_choices()[:3]

    def columns_update(self) -> Any:
        return gr.Dropdown(choices=self.column_choices(), value=self.default_columns())

    def build(self) -> None:
        gen = self.runtime.config.generation
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                prompt = gr.Textbox(label=ui("compare.prompt"), value=DEFAULT_PROMPT, lines=2, elem_id="mmchat-compare-prompt",
                                    max_length=self.runtime.config.limits.max_prompt_chars)
                # Any names pass the dropdown (API clients never see its refreshed choices); the
                # engine refuses unknown ones with the list of loaded adapters.
                columns = gr.Dropdown(label=ui("compare.columns"), multiselect=True,
                                      max_choices=MAX_COLUMNS, allow_custom_value=True, choices=[BASE], value=[BASE],
                                      elem_id="mmchat-compare-columns")
            with gr.Column(scale=2, min_width=220):
                # Starts with the shipped cat photo, so the first click shows the styles apart.
                example = EXAMPLE_DIR / "cat.png"
                image = gr.Image(label=ui("compare.photo"), type="filepath", sources=["upload"], height=160,
                                 value=str(example) if example.is_file() else None, elem_id="mmchat-compare-image")
        with gr.Row():
            max_new_tokens = gr.Slider(1, 512, value=min(64, gen.max_new_tokens), step=1, label=ui("shared.max_new_tokens"))
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label=ui("compare.temperature"))
        with gr.Row(elem_classes="mmchat-actions"):
            run_btn = gr.Button(ui("compare.run"), variant="primary", elem_id="mmchat-compare-run")
            stop_btn = gr.Button(ui("shared.stop"), variant="secondary", interactive=False, elem_id="mmchat-compare-stop")
        with gr.Row(equal_height=False, elem_id="mmchat-compare-answers"):
            outputs = [gr.Markdown(visible=i < 3, elem_id=f"mmchat-compare-col{i}", elem_classes="mmchat-compare-col",
                                   min_height=60)
                       for i in range(MAX_COLUMNS)]
        with gr.Accordion(ui("compare.differences"), open=True):
            diffs = [gr.HighlightedText(label=ui("compare.column_vs", n=i + 1), visible=False, combine_adjacent=True,
                                        color_map={"+": "green", "-": "red"}, show_legend=False,
                                        elem_id=f"mmchat-compare-diff{i}")
                     for i in range(1, MAX_COLUMNS)]
        with gr.Accordion(ui("compare.figures"), open=False):
            figures = gr.JSON(elem_id="mmchat-compare-figures")

        runtime = self.runtime

        def view(columns_now: list[Any], final: bool) -> tuple:
            cells = [gr.Markdown(value=column_markdown(c), visible=True) for c in columns_now]
            cells += [gr.Markdown(value="", visible=False)] * (MAX_COLUMNS - len(columns_now))
            if final:
                first = columns_now[0].text
                shown = [gr.HighlightedText(value=word_diff(first, c.text), visible=True,
                                            label=t("compare.vs", a=c.adapter, b=columns_now[0].adapter))
                         for c in columns_now[1:]]
            else:
                shown = [gr.HighlightedText(visible=False)] * (len(columns_now) - 1)
            shown += [gr.HighlightedText(visible=False)] * (MAX_COLUMNS - 1 - (len(columns_now) - 1))
            return (*cells, *shown, figures_json(columns_now))

        def run(text: str, image_path: str | None, chosen: list[str], max_tokens: float, temp: float,
                request: gr.Request):
            from mmchat.attachments import ingest_upload
            from mmchat.backends.base import GenerationParams
            from mmchat.compare import compare

            stop = threading.Event()
            key = getattr(request, "session_hash", None) or "api"
            self._stops[key] = stop
            answers = None
            try:
                runtime.wait_ready()
                if not (text or "").strip():
                    raise UserFacingError(t("compare.type_prompt"))
                image = None
                if image_path:
                    attachment = ingest_upload(image_path, store_dir=runtime.upload_dir, limits=runtime.config.limits)
                    image = attachment.open_image()
                params = GenerationParams.for_policy(
                    runtime.backend.info.answer, max_new_tokens=int(max_tokens), temperature=float(temp),
                    top_p=runtime.config.generation.top_p,
                )
                last = 0.0
                snapshot: list[Any] = []
                answers = compare(runtime.backend, text, image, list(chosen or []), params,
                                  system_prompt=runtime.config.generation.system_prompt, stop=stop)
                for snapshot in answers:
                    now = time.perf_counter()
                    if now - last >= 0.05:
                        last = now
                        yield view(snapshot, final=False)
                if snapshot:
                    yield view(snapshot, final=True)
            except UserFacingError as err:
                raise gr.Error(localize(str(err))) from None
            except Exception as err:  # a bug or a backend failure: say so, keep serving
                log.exception("compare failed")
                raise gr.Error(t("compare.failed", error=f"{err.__class__.__name__}: {err}")) from None
            finally:  # also when the browser goes away: the batch stops and the model is free again
                if answers is not None:
                    answers.close()
                self._stops.pop(key, None)

        def stop(request: gr.Request) -> None:
            event = self._stops.get(getattr(request, "session_hash", None) or "api")
            if event is not None:
                event.set()

        quiet: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
        limit = runtime.config.server.concurrency_limit
        event = run_btn.click(lambda: gr.Button(interactive=True, variant="stop"), None, stop_btn, **quiet).then(
            run, [prompt, image, columns, max_new_tokens, temperature], [*outputs, *diffs, figures],
            api_name="compare", concurrency_limit=limit, concurrency_id="generate",
            show_progress="minimal", show_progress_on=[outputs[0]],
        )
        event.then(lambda: gr.Button(interactive=False, variant="secondary"), None, stop_btn, **quiet)
        stop_btn.click(stop, None, None, api_name="compare_stop", queue=False)
        self.columns, self.prompt, self.image = columns, prompt, image

    def wire(self, app: AppTabs) -> None:
        from mmchat.ui.adapters import AdaptersTab

        app.demo.load(self.columns_update, None, self.columns, show_progress="hidden")
        from mmchat.ui.finetune import FinetuneTab

        for source in (app.find(AdaptersTab), app.find(FinetuneTab)):
            for event in source.changed if source else []:
                event.then(self.columns_update, None, self.columns, show_progress="hidden")

        def refreshed(current: list[str] | None) -> Any:
            self.runtime.sync_adapters()  # a run in another browser may have published one
            names = set(self.column_choices())
            kept = [c for c in current or [] if c in names]
            return gr.Dropdown(choices=self.column_choices(), value=kept if len(kept) >= 2 else self.default_columns())

        self.container.select(refreshed, self.columns, self.columns, show_progress="hidden")
