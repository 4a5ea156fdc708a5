"""The Fine-tune tab: a dataset checked and shown as the model sees it, a LoRA run followed live.

1. **Dataset**: a built-in one or an uploaded file (JSONL, JSON, a zip with images, a chat
   export). Validate shows usable and bad rows (each with its line and reason), token
   lengths against the cutoff, the split, and the first rows exactly as the model will read
   them with the supervised answer highlighted (`mmchat.training.service.Finetuner.prepare`).
   Bad rows block Train until "train on the N usable rows" is ticked.
2. **Settings**: a preset (quick / balanced / thorough, with its steps and a time measured on
   this machine) or the advanced fields; a bad value is refused naming the field and range.
   The visual presets (quick visual, two-stage) train the offline model's image pathway on the
   built-in shapes pictures, with a targets choice (LoRA, projector, both, two-stage, prompt
   tuning + LoRA) and its learning rates and counts; picking the shapes dataset picks the
   quick visual preset, and a text dataset a text preset.
3. **Run**: Train starts a trainer process (`mmchat.training.runs`); a timer redraws the
   progress (step, ETA, tokens/s, memory), the loss and held-out loss chart from step 1, and
   the latest sample answers, from the run's files — so a reload, another browser or a
   restart shows the same. Stop (keep what was trained, or discard), Resume, and the runs
   list with Delete. When a run ends: the held-out scores, the gallery (prompt, photo,
   expected, base, adapter), the adapter in Chat's and Compare's lists, and "Open in Compare".

Every action has an `api_name` (`/finetune_validate`, `/finetune_preview`, `/finetune_start`,
`/finetune_status`, `/finetune_stop`, `/finetune_resume`, `/finetune_runs`,
`/finetune_delete`). No training happens in this process and no torch is imported here.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from mmchat.errors import UserFacingError
from mmchat.ui.i18n import t, term, ui
from mmchat.ui.messages import localize
from mmchat.ui.render import table_value
from mmchat.ui.tabs import AppTabs, Tab, upload_path

log = logging.getLogger(__name__)

GALLERY_KEYS = ["prompt", "expected", "base", "adapter"]


def headers(table: str, keys: list[str]) -> list[str]:
    """A table's column names in the visitor's language."""
    return [t(f"{table}.{key}") for key in keys]


def run_headers() -> list[str]:
    return headers("runs", ["run", "adapter", "state", "step", "final_loss", "dataset"])


def dataset_choices() -> list[tuple[str, str]]:
    from mmchat.training.datasets import BUILTIN, VISUAL_BUILTIN

    return [(t("ft.builtin", name=name, blurb=term("description", blurb)), name)
            for name, blurb in {**BUILTIN, **VISUAL_BUILTIN}.items()] + [(t("ft.upload_choice"), "")]


ADVANCED_KEYS = ("rank", "alpha", "dropout", "target_modules", "learning_rate", "max_steps", "epochs", "batch_size",
                 "grad_accum", "warmup_steps", "eval_every", "sample_every", "checkpoint_every")
VISUAL_KEYS = ("projector_learning_rate", "prompt_tokens", "prompt_learning_rate", "projector_first")
INTEGER_KEYS = {"rank", "max_steps", "epochs", "batch_size", "grad_accum", "warmup_steps", "eval_every",
                "sample_every", "checkpoint_every", "max_length", "prompt_tokens", "projector_first"}


def field_values(keys: tuple[str, ...], values: list[Any]) -> dict[str, Any]:
    """The fields that were filled in, whole-number fields as ints (a fraction refused, naming the field)."""
    out = {}
    for key, value in zip(keys, values):
        if value is None or value == "":
            continue
        if key in INTEGER_KEYS and isinstance(value, float):
            if not value.is_integer():
                raise UserFacingError(t("ft.not_whole", key=key, value=repr(value)))
            value = int(value)
        out[key] = value
    return out


def visual_fields(name: str) -> dict[str, Any]:
    """A visual preset's targets choice and fields (what the tab shows; defaults for a text preset)."""
    from mmchat.training.service import (
        DEFAULT_PROJECTOR_FIRST, DEFAULT_PROMPT_TOKENS, PRESETS, VISUAL_PRESETS, visual_choice)

    targets = PRESETS[name].visual or PRESETS[VISUAL_PRESETS[0]].visual
    values = {"prompt_tokens": DEFAULT_PROMPT_TOKENS, "projector_first": DEFAULT_PROJECTOR_FIRST,
              **{k: v for k, v in targets.items() if v}}
    return {"choice": visual_choice(targets), **{key: values[key] for key in VISUAL_KEYS}}


def preset_fields(name: str) -> dict[str, Any]:
    """A preset's values for the advanced fields (the fields show concrete numbers, never blanks)."""
    from mmchat.training.config import TrainingConfig
    from mmchat.training.service import PRESETS, TARGETS

    values = {**TrainingConfig(name="x", description="x").to_dict(), **PRESETS[name].values}
    targets = tuple(values["target_modules"])
    values["target_modules"] = next((label for label, t in TARGETS.items() if t == targets), None)
    return {key: values[key] for key in ADVANCED_KEYS}


def parse_ratio(text: str) -> tuple[int, int] | None:
    """'2:1' -> (2, 1); '' -> None (as is)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.replace(" ", "").split(":")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 100 for p in parts):
        raise UserFacingError(t("ft.bad_ratio", text=repr(text)))
    return int(parts[0]), int(parts[1])


def progress_html(status: dict[str, Any]) -> str:
    """The progress bar and one line of figures for a run's status."""
    if not status:
        return f"<div class='mmchat-ft-progress'>{html.escape(t('ft.no_run'))}</div>"
    step, total = status.get("step", 0), status.get("total_steps") or 0
    state = status.get("state", "")
    figures = [f"<b>{html.escape(status.get('name', ''))}</b> · {html.escape(term('state', state))}",
               t("ft.step", step=step, total=total or "?")]
    if status.get("eta_s") is not None:
        figures.append(t("ft.eta", s=f"{status['eta_s']:.0f}"))
    if status.get("step_s"):
        figures.append(t("ft.step_s", s=f"{status['step_s']:.2f}"))
    if status.get("tokens_per_s"):
        figures.append(t("ft.tokens_s", n=f"{status['tokens_per_s']:.0f}"))
    if status.get("rss_mib"):
        figures.append(t("ft.memory", n=f"{status['rss_mib']:.0f}"))
    if status.get("phase"):
        figures.append(html.escape(term("ft_phase", status["phase"])))
    evaluation = status.get("evaluation") or {}
    if state == "evaluating" and evaluation:
        figures.append(t("ft.evaluated", done=evaluation.get("done", 0), total=evaluation.get("total", "?")))
    bar = f"<progress max='{max(total, 1)}' value='{step}' style='width:100%'></progress>"
    text = " · ".join(figures)
    if status.get("error"):
        text += f"<br><span class='mmchat-ft-error'>{html.escape(localize(status['error']))}</span>"
    if status.get("log_tail"):
        text += f"<pre class='mmchat-ft-log'>{html.escape(status['log_tail'])}</pre>"
    return f"<div class='mmchat-ft-progress' id='mmchat-ft-progress-{html.escape(state)}'>{bar}<div>{text}</div></div>"


def loss_frame(status: dict[str, Any]) -> Any:
    import pandas as pd

    training, held_out = t("ft.training_loss"), t("ft.held_out_loss")
    rows = [{"step": s, "loss": v, "series": training} for s, v in status.get("loss", [])]
    rows += [{"step": s, "loss": v, "series": held_out} for s, v in status.get("eval_loss", [])]
    # Both series are always present (as empty points when there is nothing yet): gradio's
    # chart fixes its colour channel on the first frame it draws, and one drawn from an empty
    # frame never shows a line afterwards (measured with gradio 6.31 in Chromium).
    # (A series with points gets no empty one: it would break its line where it lies.)
    anchor = min((row["step"] for row in rows), default=1)
    present = {row["series"] for row in rows}
    rows += [{"step": anchor, "loss": float("nan"), "series": name} for name in (training, held_out)
             if name not in present]
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    return frame.astype({"step": "int64", "loss": "float64", "series": "object"})


def samples_markdown(status: dict[str, Any]) -> str:
    samples = status.get("samples") or []
    if not samples:
        return t("ft.samples_none")
    lines = [t("ft.samples_at", step=status.get("samples_step")), "", t("ft.samples_header"), "|---|---|---|"]
    for sample in samples:
        cells = [str(sample.get(k, "")).replace("|", "\\|").replace("\n", " ")[:160]
                 for k in ("prompt", "expected", "answer")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def result_markdown(status: dict[str, Any]) -> str:
    state = status.get("state")
    if state != "done":
        if state == "stopped":
            return t("ft.stopped_at", step=status.get("checkpoint_step") or status.get("step"))
        if state in ("failed", "interrupted"):
            return t("ft.ended", state=term("state", state).capitalize(), error=localize(status.get("error", "")))
        return ""
    metrics = status.get("metrics") or {}
    lines = [t("ft.published", name=status.get("adapter"))]
    keys = sorted({k for side in ("base", "adapter") for k, v in (metrics.get(side) or {}).items()
                   if isinstance(v, (int, float))})
    if keys:
        lines += ["", t("card.metrics_header"), "|---|---|---|"]
        for key in keys:
            base, adapted = (metrics.get("base") or {}).get(key), (metrics.get("adapter") or {}).get(key)
            lines.append(f"| {term('metric', key)} | {_num(base)} | {_num(adapted)} |")
    for note in (metrics.get("held_out") or {}).get("notes", []) if isinstance(metrics.get("held_out"), dict) else []:
        lines.append(f"\n_{note}_")
    training = metrics.get("training") or {}
    if training:
        lines.append("\n" + t("ft.training", steps=training.get("steps"), first=training.get("first_loss"),
                                final=training.get("final_loss"), seconds=training.get("seconds"))
                     + (t("ft.trained", targets=term("targets", training["targets_label"]))
                        if training.get("targets_label") else ""))
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


def gallery_rows(status: dict[str, Any]) -> list[list[str]]:
    return [[str(row.get(k, ""))[:300] for k in GALLERY_KEYS] for row in status.get("gallery") or []]


def gallery_images(status: dict[str, Any]) -> list[tuple[str, str]]:
    items = []
    for row in status.get("gallery") or []:
        if row.get("image") and Path(row["image"]).is_file():
            items.append((row["image"], t("ft.photo_caption", expected=row.get("expected", ""),
                                          base=row.get("base", "")[:40], adapter=row.get("adapter", "")[:40])))
    return items


def run_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for run in runs:
        final = run["loss"][-1][1] if run.get("loss") else ""
        rows.append([run["id"], run.get("name", ""), term("state", run["state"]),
                     f"{run['step']}/{run['total_steps'] or '?'}", final,
                     (run.get("dataset") or {}).get("source", "")])
    return rows


class FinetuneTab(Tab):
    title, tab_id = "tab.finetune", "finetune"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        from mmchat.training.service import Finetuner

        self.finetuner = Finetuner(runtime)

    @property
    def enabled(self) -> bool:
        return self.runtime.config.finetune.enabled and self.runtime.config.adapters.enabled

    # --- the handlers (plain methods: the API and the tests call them too) ---
    def prepare(self, choice: str, upload: Any, kept_only: bool, max_length: float, eval_fraction: float,
                ratio: str, seed: float) -> Any:
        path = Path(upload_path(upload)) if upload else None
        if not choice and path is None:
            raise UserFacingError(t("ft.no_dataset"))
        # An uploaded file wins over the dropdown (uploading picks "your file" there too).
        return self.finetuner.prepare(
            builtin=None if path else choice, path=path,
            display=Path(getattr(upload, "orig_name", "") or (upload.get("orig_name", "") if isinstance(upload, dict)
                                                              else "") or (path.name if path else "")).name or None,
            max_length=int(max_length), eval_fraction=float(eval_fraction), caption_to_vqa=parse_ratio(ratio),
            seed=int(seed), kept_only=bool(kept_only))

    @staticmethod
    def preparation_key(choice: str, upload: Any, kept_only: bool, max_length: float, eval_fraction: float,
                        ratio: str, seed: float) -> str:
        """What Validate prepared from; Train validates again when the inputs changed since."""
        from mmchat.training.service import preparation_key

        source = upload_path(upload) if upload else f"builtin:{choice}"
        return preparation_key(source, max_length=int(max_length), eval_fraction=float(eval_fraction),
                               caption_to_vqa=parse_ratio(ratio), seed=int(seed), kept_only=bool(kept_only))

    def settings(self, preset: str, name: str, description: str, advanced: dict[str, Any]) -> Any:
        name = (name or "").strip()
        # Stored in the adapter's card, which every visitor reads: English, like the shipped cards.
        description = (description or "").strip() or f"fine-tuned in the app ({preset} preset)"
        return self.finetuner.settings(preset, name=name, description=description, **advanced)

    def visual(self, preset: str, choice: str, values: dict[str, Any]) -> Any:
        """A visual preset's targets from the tab's choice and fields (None for a text preset)."""
        return self.finetuner.visual_targets(preset, choice or None, **values)

    def build(self) -> None:
        from mmchat.training.config import MAX_RANK
        from mmchat.training.datasets import VISUAL_BUILTIN
        from mmchat.training.service import PRESETS, TARGETS, VISUAL_PRESETS, VISUAL_TARGETS

        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                gr.Markdown(ui("ft.h_dataset"))
                choice = gr.Dropdown(label=ui("ft.dataset"), choices=dataset_choices(), value="one-word",
                                     elem_id="mmchat-ft-dataset")
                upload = gr.File(label=ui("ft.upload"), file_types=[".jsonl", ".json", ".zip"],
                                 elem_id="mmchat-ft-upload")
                kept_only = gr.Checkbox(label=ui("ft.kept_only"), value=True)
                validate_btn = gr.Button(ui("ft.validate"), variant="secondary", elem_id="mmchat-ft-validate")
                summary = gr.Markdown(elem_id="mmchat-ft-summary")
                bad_table = gr.Dataframe(headers=headers("bad", ["row", "problem"]), interactive=False, wrap=True,
                                         visible=False, label=ui("ft.bad_rows"), elem_id="mmchat-ft-bad")
                accept_bad = gr.Checkbox(label=ui("ft.accept_bad"), value=False, visible=False,
                                         elem_id="mmchat-ft-accept")
                with gr.Accordion(ui("ft.preview"), open=True):
                    preview = gr.HTML(elem_id="mmchat-ft-preview")
                    preview_images = gr.Gallery(label=ui("ft.preview_photos"), visible=False, height=140,
                                                columns=4, elem_id="mmchat-ft-preview-images")
            with gr.Column(scale=2, min_width=280):
                gr.Markdown(ui("ft.h_settings"))
                preset = gr.Radio([(ui(f"preset.{p}"), p) for p in PRESETS], value="quick", label=ui("ft.preset"), elem_id="mmchat-ft-preset")
                preset_info = gr.Markdown(elem_id="mmchat-ft-preset-info")
                start_visual = visual_fields("quick")
                with gr.Group(visible=False, elem_id="mmchat-ft-visual") as visual_group:
                    gr.Markdown(ui("ft.visual_note"))
                    visual_choice = gr.Radio([(ui(f"targets.{v}"), v) for v in VISUAL_TARGETS],
                                             value=start_visual["choice"], label=ui("ft.visual_targets"), elem_id="mmchat-ft-visual-targets")
                    with gr.Row():
                        projector_lr = gr.Number(label=ui("ft.projector_lr"),
                                                 value=start_visual["projector_learning_rate"])
                        projector_first = gr.Number(label=ui("ft.projector_first"),
                                                    value=start_visual["projector_first"], precision=0)
                    with gr.Row():
                        prompt_tokens = gr.Number(label=ui("ft.prompt_tokens"),
                                                  value=start_visual["prompt_tokens"], precision=0)
                        prompt_lr = gr.Number(label=ui("ft.prompt_lr"),
                                              value=start_visual["prompt_learning_rate"])
                name = gr.Textbox(label=ui("ft.name"), max_length=48, value="my-adapter",
                                  elem_id="mmchat-ft-name")
                description = gr.Textbox(label=ui("ft.description"), max_length=200, elem_id="mmchat-ft-description")
                with gr.Accordion(ui("ft.advanced"), open=False):
                    start_values = preset_fields("quick")
                    with gr.Row():
                        rank = gr.Number(label=ui("ft.rank", max=MAX_RANK), value=start_values["rank"], precision=0)
                        alpha = gr.Number(label=ui("ft.alpha"), value=start_values["alpha"])
                        dropout = gr.Number(label=ui("ft.dropout"), value=start_values["dropout"])
                    targets = gr.Radio([(ui(f"targets.{v}"), v) for v in TARGETS], value=start_values["target_modules"],
                                       label=ui("ft.targets"))
                    with gr.Row():
                        learning_rate = gr.Number(label=ui("ft.learning_rate"), value=start_values["learning_rate"])
                        max_steps = gr.Number(label=ui("ft.max_steps"), value=start_values["max_steps"],
                                              precision=0)
                        epochs = gr.Number(label=ui("ft.epochs"), value=start_values["epochs"], precision=0)
                    with gr.Row():
                        batch_size = gr.Number(label=ui("ft.batch_size"), value=start_values["batch_size"], precision=0)
                        grad_accum = gr.Number(label=ui("ft.grad_accum"), value=start_values["grad_accum"],
                                               precision=0)
                        warmup = gr.Number(label=ui("ft.warmup"), value=start_values["warmup_steps"], precision=0)
                    with gr.Row():
                        eval_every = gr.Number(label=ui("ft.eval_every"), value=start_values["eval_every"],
                                               precision=0)
                        sample_every = gr.Number(label=ui("ft.sample_every"),
                                                 value=start_values["sample_every"], precision=0)
                        checkpoint_every = gr.Number(label=ui("ft.checkpoint_every"),
                                                     value=start_values["checkpoint_every"], precision=0)
                    with gr.Row():
                        max_length = gr.Number(label=ui("ft.max_length"), value=256, precision=0)
                        eval_fraction = gr.Number(label=ui("ft.eval_fraction"), value=0.1)
                        seed = gr.Number(label=ui("ft.seed"), value=0, precision=0)
                    ratio = gr.Textbox(label=ui("ft.ratio"), value="")
                    gr.Markdown(ui("ft.qlora_note"))
                train_btn = gr.Button(ui("ft.train"), variant="primary", elem_id="mmchat-ft-train")
                start_note = gr.Markdown(elem_id="mmchat-ft-start-note")
        gr.Markdown(ui("ft.h_run"))
        progress = gr.HTML(progress_html({}), elem_id="mmchat-ft-progress")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                plot = gr.LinePlot(loss_frame({}), x="step", y="loss", color="series", height=260,
                                   label=ui("ft.plot"), elem_id="mmchat-ft-plot")
            with gr.Column(scale=2, min_width=280):
                samples = gr.Markdown(samples_markdown({}), elem_id="mmchat-ft-samples")
        with gr.Row(elem_classes="mmchat-actions"):
            stop_btn = gr.Button(ui("shared.stop"), variant="stop", elem_id="mmchat-ft-stop", interactive=False, min_width=120)
            keep = gr.Checkbox(label=ui("ft.keep"), value=False, elem_id="mmchat-ft-keep",
                               min_width=220)
            resume_btn = gr.Button(ui("ft.resume"), elem_id="mmchat-ft-resume", interactive=False, min_width=120)
            compare_btn = gr.Button(ui("ft.open_compare"), elem_id="mmchat-ft-compare", interactive=False, min_width=160)
        result = gr.Markdown(elem_id="mmchat-ft-result")
        gallery = gr.Dataframe(headers=headers("gallery", GALLERY_KEYS), interactive=False, wrap=True,
                               label=ui("ft.gallery"),
                               visible=False, elem_id="mmchat-ft-gallery")
        gallery_photos = gr.Gallery(label=ui("ft.gallery_photos"), visible=False, height=180, columns=4)
        with gr.Accordion(ui("ft.runs"), open=False):
            runs_table = gr.Dataframe(headers=run_headers(), interactive=False, wrap=True, elem_id="mmchat-ft-runs")
            run_choice = gr.Dropdown(label=ui("ft.run_choice"), choices=[], allow_custom_value=True,
                                     elem_id="mmchat-ft-run")
            with gr.Row():
                confirm = gr.Checkbox(label=ui("ft.confirm_delete"), value=False)
                delete_btn = gr.Button(ui("ft.delete_run"), variant="stop", size="sm", elem_id="mmchat-ft-delete")
        status_json = gr.JSON(visible=False)
        prepared = gr.State(None)
        seen = gr.State("")
        published = gr.Textbox(visible=False)
        timer = gr.Timer(1.0)

        advanced = [rank, alpha, dropout, targets, learning_rate, max_steps, epochs, batch_size, grad_accum, warmup,
                    eval_every, sample_every, checkpoint_every]
        visual_inputs = [visual_choice, projector_lr, prompt_tokens, prompt_lr, projector_first]
        dataset_inputs = [choice, upload, kept_only, max_length, eval_fraction, ratio, seed]

        def describe_preset(preset_name: str, state: Any) -> str:
            try:
                from mmchat.training.service import PRESETS as presets

                config = self.finetuner.settings(preset_name, name="estimate", description="estimate")
                rows = len(state.train) if state is not None else None
                estimate = self.finetuner.estimate(config, rows, visual=preset_name in VISUAL_PRESETS) if rows \
                    else t("ft.validate_for_time")
                return t("ft.preset_line", blurb=term("description", presets[preset_name].blurb),
                         estimate=localize(estimate))
            except UserFacingError as err:
                return localize(str(err))

        def validate(*values: Any):
            try:
                state = self.prepare(*values)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return (None, "❌ " + localize(str(err)), gr.Dataframe(visible=False), gr.Checkbox(visible=False), "",
                        gr.Gallery(visible=False))
            except Exception as err:
                log.exception("dataset preparation failed")
                return (None, "❌ " + t("ft.unreadable", error=f"{err.__class__.__name__}: {err}"),
                        gr.Dataframe(visible=False), gr.Checkbox(visible=False), "", gr.Gallery(visible=False))
            bad = [[where, localize(reason)] for where, reason in state.bad_rows()]
            usable = len(state.train) + len(state.held_out)
            images = [(path, t("ft.row", n=i + 1)) for i, (_, paths) in enumerate(state.preview) for path in paths]
            return (state, localize(state.summary_markdown()),
                    gr.Dataframe(value=table_value(bad, headers("bad", ["row", "problem"])), visible=bool(bad)),
                    gr.Checkbox(label=t("ft.accept_n", usable=usable, bad=len(bad)),
                                visible=bool(bad), value=False),
                    "".join(html_row for html_row, _ in state.preview) or f"<p>{html.escape(t('ft.no_usable'))}</p>",
                    gr.Gallery(value=images or None, visible=bool(images)))

        def start(*values: Any):
            state, preset_name, adapter_name, line, accept, *rest = values
            dataset_values, rest = rest[: len(dataset_inputs)], rest[len(dataset_inputs):]
            advanced_list, visual_list = rest[: len(advanced)], rest[len(advanced):]
            try:
                chosen = field_values(ADVANCED_KEYS, list(advanced_list))
                chosen["max_length"] = int(dataset_values[3] or 256)
                config = self.settings(preset_name, adapter_name, line, chosen)
                visual_targets = self.visual(preset_name, visual_list[0] if visual_list else "",
                                             field_values(VISUAL_KEYS, list(visual_list[1:])))
                if state is None or state.key != self.preparation_key(*dataset_values):
                    state = self.prepare(*dataset_values)
                run_id = self.finetuner.start(state, config, accept_bad=bool(accept), visual=visual_targets)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return state, "❌ " + localize(str(err)), gr.Dropdown()
            return (state, t("ft.started", run=run_id),
                    gr.Dropdown(choices=self.finetuner.manager.run_ids(), value=run_id))

        def follow(run_id: str | None, last: str):
            """The timer: redraw only when the run's figures changed."""
            manager = self.finetuner.manager
            try:
                if not run_id:
                    ids = manager.run_ids()
                    run_id = ids[0] if ids else None
                status = manager.status(run_id) if run_id else {}
            except UserFacingError:
                status = {}
            signature = json.dumps([status.get(k) for k in ("id", "state", "step", "phase", "samples_step",
                                                            "evaluation", "adapter", "error")], default=str)
            if signature == last:
                return [gr.skip()] * 13
            if status.get("state") == "done":
                self.runtime.sync_adapters()
            rows = gallery_rows(status)
            photos = gallery_images(status)
            # The chart's titles cannot be translated by the page: they come with each redraw.
            chart = gr.LinePlot(value=loss_frame(status), x_title=t("ft.axis_step"), y_title=t("ft.axis_loss"),
                                color_title=t("ft.axis_series"))
            return (signature, progress_html(status), chart, samples_markdown(status),
                    result_markdown(status),
                    gr.Dataframe(value=table_value(rows, headers("gallery", GALLERY_KEYS)), visible=bool(rows)),
                    gr.Gallery(value=photos or None, visible=bool(photos)),
                    gr.Button(interactive=status.get("state") == "done"),
                    status.get("adapter", "") if status.get("state") == "done" else "",
                    status, table_value(run_rows(manager.runs()), run_headers()),
                    gr.Button(interactive=status.get("state") in ("starting", "running", "evaluating")),
                    gr.Button(interactive=bool(status.get("resumable"))))

        def stop(run_id: str | None, keep_it: bool):
            manager = self.finetuner.manager
            try:
                run_id = run_id or manager.active()
                if not run_id:
                    raise UserFacingError(t("ft.no_active"))
                status = manager.stop(run_id, keep=bool(keep_it))
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return localize(str(err))
            kept = t("ft.publishing") if keep_it else ""
            return t("ft.stopped", run=run_id, step=status["step"]) + kept

        def resume(run_id: str | None):
            manager = self.finetuner.manager
            try:
                if not run_id:
                    raise UserFacingError(t("ft.choose_run"))
                status = manager.resume(run_id)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return localize(str(err))
            return t("ft.resumed", run=run_id, step=status["checkpoint_step"])

        def delete(run_id: str | None, sure: bool):
            manager = self.finetuner.manager
            if not sure:
                gr.Warning(t("shared.tick_to_delete"))
                return t("shared.nothing_deleted"), gr.Dropdown(), False
            try:
                manager.delete(run_id or "")
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return localize(str(err)), gr.Dropdown(), False
            ids = manager.run_ids()
            return t("ft.deleted", run=run_id), gr.Dropdown(choices=ids, value=ids[0] if ids else None), False

        def runs_listing():
            manager = self.finetuner.manager
            ids = manager.run_ids()
            return (table_value(run_rows(manager.runs()), run_headers()),
                    gr.Dropdown(choices=ids, value=ids[0] if ids else None))

        quiet = {"show_progress": "hidden"}
        preset.change(describe_preset, [preset, prepared], preset_info, **quiet)
        preset.change(lambda name: list(preset_fields(name).values()), preset, advanced, **quiet)
        preset.change(lambda name: [gr.Group(visible=name in VISUAL_PRESETS), *visual_fields(name).values()], preset,
                      [visual_group, *visual_inputs], **quiet)

        def preset_for(dataset: str, current: str) -> Any:
            """The shapes pictures take a visual preset, the other datasets a text one."""
            wanted_visual = dataset in VISUAL_BUILTIN
            if wanted_visual == (current in VISUAL_PRESETS):
                return gr.Radio()
            return gr.Radio(value=VISUAL_PRESETS[0] if wanted_visual else next(iter(PRESETS)))

        choice.change(preset_for, [choice, preset], preset, **quiet)
        upload.change(lambda item: gr.Dropdown(value="") if item else gr.Dropdown(), upload, choice, **quiet)
        validate_event = validate_btn.click(validate, dataset_inputs,
                                            [prepared, summary, bad_table, accept_bad, preview, preview_images],
                                            api_name="finetune_validate")
        validate_event.then(describe_preset, [preset, prepared], preset_info, **quiet)
        gr.api(self.api_preview, api_name="finetune_preview")
        train_btn.click(start, [prepared, preset, name, description, accept_bad, *dataset_inputs, *advanced,
                                *visual_inputs], [prepared, start_note, run_choice], api_name="finetune_start")
        follow_outputs = [seen, progress, plot, samples, result, gallery, gallery_photos, compare_btn, published,
                          status_json, runs_table, stop_btn, resume_btn]
        timer.tick(follow, [run_choice, seen], follow_outputs, **quiet)
        run_choice.change(follow, [run_choice, gr.State("")], follow_outputs, **quiet)
        stop_btn.click(stop, [run_choice, keep], start_note, api_name="finetune_stop")
        resume_btn.click(resume, [run_choice], start_note, api_name="finetune_resume")
        delete_btn.click(delete, [run_choice, confirm], [start_note, run_choice, confirm], api_name="finetune_delete")
        gr.api(self.api_status, api_name="finetune_status")
        gr.api(self.api_runs, api_name="finetune_runs")
        self.choice = choice
        self.run_choice, self.compare_btn, self.published, self.status_json = run_choice, compare_btn, published, status_json
        self.runs_listing, self.runs_outputs, self.preset_outputs = runs_listing, [runs_table, run_choice], (
            describe_preset, [preset, prepared], preset_info)
        self.changed = [published.change(lambda: None, None, None, **quiet)]

    # --- API-only endpoints (gr.api: typed from the signatures) ---
    def api_status(self, run_id: str = "") -> dict:
        """The run's status as JSON (the newest run when run_id is empty)."""
        manager = self.finetuner.manager
        run_id = run_id or next(iter(manager.run_ids()), "")
        if not run_id:
            return {"state": "none", "error": "no run yet"}
        status = manager.status(run_id)
        if status.get("state") == "done":
            self.runtime.sync_adapters()
        return status

    def api_runs(self) -> list:
        """Every run's status, newest first."""
        return self.finetuner.manager.runs()

    def api_preview(self, dataset: str = "one-word", rows: int = 3, max_length: int = 256) -> dict:
        """A built-in dataset's first rows as the model reads them (HTML with the supervised span marked)."""
        state = self.finetuner.prepare(builtin=dataset, max_length=int(max_length))
        return {"summary": state.summary_markdown(), "bad_rows": state.bad_rows(),
                "rows": [html_row for html_row, _ in state.preview[: max(1, int(rows))]]}

    def wire(self, app: AppTabs) -> None:
        from mmchat.ui.compare import CompareTab

        app.demo.load(self.runs_listing, None, self.runs_outputs, show_progress="hidden")
        # The built-in datasets' lines in the visitor's language (choices are not translated by the page).
        app.demo.load(lambda: gr.Dropdown(choices=dataset_choices()), None, self.choice, show_progress="hidden")
        describe, inputs, output = self.preset_outputs
        app.demo.load(describe, inputs, output, show_progress="hidden")
        compare = app.find(CompareTab)
        if compare is None:
            return

        def open_compare(status: dict[str, Any]):
            adapter = (status or {}).get("adapter")
            gallery = (status or {}).get("gallery") or []
            prompt = gallery[0].get("question") or gallery[0].get("prompt", "") if gallery else ""
            image = gallery[0].get("image") or None if gallery else None
            return (gr.Tabs(selected=compare.tab_id), gr.Textbox(value=prompt),
                    gr.Dropdown(choices=compare.column_choices(), value=["base", adapter] if adapter else ["base"]),
                    image)

        self.compare_btn.click(open_compare, [self.status_json], [app.tabs_component, compare.prompt, compare.columns,
                                                                  compare.image])
