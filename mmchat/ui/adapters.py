"""The Adapters tab: the LoRA adapters in the store, their cards, upload, export, merge, delete.

The table lists the adapters loaded for this model (name, store: shipped or yours, task, one
line, rank, targets, held-out metric of the adapter vs the base, created); picking one shows
its whole card with its held-out examples. Upload takes a zip of a peft folder, validated
before anything is registered (`mmchat.adapters.bundle`), into the user store (never the
shipped one, and never under a shipped adapter's name); export gives the adapter as a zip;
merge writes a standalone model folder from a copy of the base (`mmchat.adapters.merge`, never
the serving model); delete removes one of the user's adapters and unloads it (shipped ones are
read-only). Adapters in the stores that are not offered (another base, incomplete, could not
load, named like a shipped one) are listed with the reason. Each action is API-callable.
Imports no torch: the models live in `Runtime`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from mmchat.errors import UserFacingError
from mmchat.ui.tabs import AppTabs, Tab, export_folder, upload_path

log = logging.getLogger(__name__)

ADAPTER_HEADERS = ["name", "store", "task", "description", "rank", "targets", "metric: adapter / base", "created"]


def headline_metric(metrics: dict[str, Any]) -> str:
    """The card's first metric as "adapter / base", e.g. "format 0.97 / 0.12"."""
    adapter, base = metrics.get("adapter") or {}, metrics.get("base") or {}
    for key, value in adapter.items():
        if isinstance(value, (int, float)):
            other = base.get(key)
            return f"{key} {value:.2f} / {other:.2f}" if isinstance(other, (int, float)) else f"{key} {value:.2f}"
    return ""


def adapter_rows(adapters: list[Any], store_of: Callable[[Any], str] = lambda a: "yours") -> list[list[Any]]:
    """One table row per adapter; `store_of(adapter)`: "shipped" or "yours"."""
    return [
        [a.name, store_of(a), a.card.task, a.card.description, a.card.rank, ", ".join(a.card.target_modules),
         headline_metric(a.card.metrics), time.strftime("%Y-%m-%d", time.localtime(a.card.created))]
        for a in adapters
    ]


def card_markdown(stored: Any, store: str = "") -> str:
    """The whole card of one adapter, with its held-out examples; `store`: shipped or yours."""
    card = stored.card
    where = {"shipped": " · **store** shipped (read-only)", "yours": " · **store** yours"}.get(store, "")
    lines = [
        f"### {card.name}", card.description, "",
        f"- **task** {card.task} · **type** {stored.peft_type} · **rank** {card.rank} · **alpha** {card.alpha:g}"
        + where,
        f"- **targets** `{', '.join(card.target_modules)}`",
        f"- **base** `{card.base_model}` (fingerprint `{card.base_fingerprint[:12]}…`)",
        f"- **created** {time.strftime('%Y-%m-%d %H:%M', time.localtime(card.created))}",
    ]
    if card.dataset:
        summary = {k: v for k, v in card.dataset.items() if k != "examples"}
        lines.append(f"- **dataset** `{json.dumps(summary, ensure_ascii=False)[:400]}`")
    metrics = card.metrics or {}
    keys = sorted({k for side in ("adapter", "base") for k in (metrics.get(side) or {})})
    if keys:
        lines += ["", "| held-out metric | base | adapter |", "|---|---|---|"]
        for key in keys:
            row = [(metrics.get(side) or {}).get(key, "") for side in ("base", "adapter")]
            row = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
            lines.append(f"| {key} | {row[0]} | {row[1]} |")
    if card.examples:
        lines += ["", "**Held-out examples**", "", "| prompt | base | adapter |", "|---|---|---|"]
        for example in card.examples[:5]:
            cells = [str(example.get(k, "")).replace("|", "\\|").replace("\n", " ")[:300]
                     for k in ("prompt", "base", "adapter")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class AdaptersTab(Tab):
    title, tab_id = "Adapters", "adapters"

    @property
    def enabled(self) -> bool:
        return self.runtime.config.adapters.enabled

    def _registry(self) -> Any:
        self.runtime.wait_ready()
        if self.runtime.adapters is None:
            raise UserFacingError(f"the adapter store is unavailable: {self.runtime.adapters_error or 'not loaded'}")
        return self.runtime.adapters

    def listing(self) -> tuple:
        """Table, name choices and the not-loaded notes, as they are now."""
        registry = self.runtime.adapters
        if registry is None:
            reason = self.runtime.adapters_error or ("loading…" if not self.runtime.ready else "not loaded")
            return [], gr.Dropdown(choices=[]), f"Adapter store: {reason}"
        adapters = registry.adapters()
        names = [a.name for a in adapters]
        notes = "\n".join(f"- {note}" for note in registry.notes)
        where = (f"`{registry.store.root}`" if registry.user_store is registry.store else
                 f"the shipped store `{registry.store.root}` (read-only) and yours `{registry.user_store.root}`")
        head = (f"{len(adapters)} adapter(s) in {where} fit the loaded model."
                if adapters else f"No adapter in {where} fits the loaded model yet.")
        return (adapter_rows(adapters, registry.store_label),
                gr.Dropdown(choices=names, value=names[0] if names else None),
                head + (f"\n\nNot offered:\n{notes}" if notes else ""))

    def build(self) -> None:
        runtime = self.runtime
        notes = gr.Markdown(elem_id="mmchat-adapters-notes")
        table = gr.Dataframe(headers=ADAPTER_HEADERS, interactive=False, wrap=False, label="Adapters",
                             elem_id="mmchat-adapters-table")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                choice = gr.Dropdown(label="Adapter", choices=[], elem_id="mmchat-adapters-choice")
                card = gr.Markdown(elem_id="mmchat-adapters-card")
            with gr.Column(scale=2, min_width=260):
                with gr.Row():
                    export_btn = gr.Button("Export zip", size="sm", elem_id="mmchat-adapters-export")
                    merge_btn = gr.Button("Merge into a model", size="sm", elem_id="mmchat-adapters-merge")
                confirm = gr.Checkbox(label="Yes, delete this adapter (yours only; shipped ones are read-only)",
                                      value=False)
                delete_btn = gr.Button("Delete", variant="stop", size="sm", elem_id="mmchat-adapters-delete")
                result = gr.Markdown(elem_id="mmchat-adapters-result")
                download = gr.File(label="Exported adapter", visible=False, interactive=False)
                upload = gr.File(label="Upload an adapter: a .zip of a peft folder (adapter_config.json, "
                                       "adapter_model.safetensors, optional adapter_card.json)",
                                 file_types=[".zip"], elem_id="mmchat-adapters-upload")
                upload_name = gr.Textbox(label="Name for an adapter without a card (optional)", max_length=48)
                upload_btn = gr.Button("Add adapter", variant="primary", size="sm", elem_id="mmchat-adapters-add")

        def show_card(name: str | None) -> str:
            if not name:
                return ""
            try:
                registry = self._registry()
                stored = registry.get(name)
                return card_markdown(stored, registry.store_label(stored))
            except UserFacingError as err:
                return str(err)

        def export(name: str | None, request: gr.Request):
            from mmchat.adapters.bundle import export_adapter_zip

            try:
                stored = self._registry().get(name or "")
                folder = export_folder(runtime, request.session_hash or "no-session")
                folder.mkdir(parents=True, exist_ok=True)
                path = export_adapter_zip(stored, folder / f"{stored.name}-{int(time.time())}.zip")
            except UserFacingError as err:
                gr.Warning(str(err))
                return gr.File(visible=False), str(err)
            return gr.File(value=str(path), visible=True), f"Exported **{stored.name}** as a zip (below)."

        def merge(name: str | None, progress=gr.Progress()):
            from mmchat.adapters.merge import merge_adapter
            from mmchat.backends.registry import load_base_copy, loaded_preset

            try:
                stored = self._registry().get(name or "")
                progress(0.1, desc="loading a copy of the base")
                preset = loaded_preset(runtime.config.model, runtime.backend.info.preset)  # not an auto fallback's
                model, processing = load_base_copy(preset, runtime.config.cache_dir())
                progress(0.5, desc="merging and writing")
                out = runtime.data_dir / "merged" / f"{stored.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                merged = merge_adapter(model, processing, stored, out)
            except UserFacingError as err:
                gr.Warning(str(err))
                return str(err)
            except Exception as err:
                log.exception("merge failed")
                return f"The merge failed ({err.__class__.__name__}: {err}); the adapter and the chat are unchanged."
            return f"Merged into a standalone model folder (safetensors, tokenizer, card): {merged.summary}."

        def delete(name: str | None, sure: bool):
            if not sure:
                gr.Warning("tick the box to confirm the deletion")
                return (*self.listing(), "Nothing deleted: tick the box to confirm.", False)
            try:
                self._registry().delete(name or "")
            except UserFacingError as err:
                gr.Warning(str(err))
                return (*self.listing(), str(err), False)
            return (*self.listing(), f"Deleted **{name}** from your adapters.", False)

        def add(upload_item: Any, name: str):
            from mmchat.adapters.bundle import import_adapter_zip, module_shapes

            if not upload_item:
                return (*self.listing(), "Choose a .zip of a peft adapter folder first.", None)
            try:
                registry = self._registry()
                stored = import_adapter_zip(  # into the user's store; a shipped name is refused there
                    Path(upload_path(upload_item)), registry.user_store, registry.fingerprint,
                    module_shapes(registry.host.base_model), limits=self.zip_limits(),
                    name=(name or "").strip() or None, base_model=runtime.backend.info.source,
                )
                registry.sync()
                if stored.name not in [a.name for a in registry.adapters()]:  # peft could not load it
                    why = next((n for n in registry.notes if n.startswith(f"{stored.name}:")),
                               f"{stored.name} did not load")
                    registry.user_store.delete(stored.name)  # nothing stays behind
                    registry.sync()
                    raise UserFacingError(why)
            except UserFacingError as err:
                gr.Warning(str(err))
                return (*self.listing(), f"Refused: {err}", None)
            except Exception as err:
                log.exception("adapter upload failed")
                return (*self.listing(), f"The upload failed ({err.__class__.__name__}: {err}); nothing was added.",
                        None)
            return (*self.listing(), f"Added **{stored.name}**: pick it in Chat or Compare.", None)

        listing_outputs = [table, choice, notes]
        self.refresh, self.listing_outputs = self.listing, listing_outputs
        choice.change(show_card, [choice], [card], show_progress="hidden", api_name="adapter_card")
        export_btn.click(export, [choice], [download, result], api_name="adapter_export")
        merge_btn.click(merge, [choice], [result], api_name="adapter_merge", show_progress_on=[result])
        delete_event = delete_btn.click(delete, [choice, confirm], [*listing_outputs, result, confirm],
                                        api_name="adapter_delete")
        add_event = upload_btn.click(add, [upload, upload_name], [*listing_outputs, result, upload],
                                     api_name="adapter_upload", show_progress_on=[result])
        self.changed = [delete_event, add_event]

    def zip_limits(self) -> Any:
        from mmchat.adapters.bundle import ZipLimits

        config = self.runtime.config.adapters
        return ZipLimits(max_zip_bytes=config.max_upload_mb * 1024 * 1024, max_rank=config.max_rank)

    def wire(self, app: AppTabs) -> None:
        app.demo.load(self.refresh, None, self.listing_outputs, api_name="adapters", show_progress="hidden")
        self.container.select(self.refresh, None, self.listing_outputs, show_progress="hidden")
