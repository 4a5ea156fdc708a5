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
from mmchat.ui.i18n import t, term, ui
from mmchat.ui.messages import localize
from mmchat.ui.render import table_value
from mmchat.ui.tabs import AppTabs, Tab, export_folder, upload_path

log = logging.getLogger(__name__)

def adapter_headers() -> list[str]:
    """The adapters table's column names, in the visitor's language."""
    return [t(f"adapters.col.{key}") for key in ("name", "store", "task", "description", "rank", "targets", "metric",
                                                 "created")]


def headline_metric(metrics: dict[str, Any]) -> str:
    """The card's first metric as "adapter / base", e.g. "format 0.97 / 0.12"."""
    adapter, base = metrics.get("adapter") or {}, metrics.get("base") or {}
    for key, value in adapter.items():
        if isinstance(value, (int, float)):
            other = base.get(key)
            name = term("metric", key)
            return f"{name} {value:.2f} / {other:.2f}" if isinstance(other, (int, float)) else f"{name} {value:.2f}"
    return ""


def adapter_rows(adapters: list[Any], store_of: Callable[[Any], str] = lambda a: "yours") -> list[list[Any]]:
    """One table row per adapter; `store_of(adapter)`: "shipped" or "yours"."""
    return [
        [a.name, term("store", store_of(a)), term("task", a.card.task), term("description", a.card.description), a.card.rank, ", ".join(a.card.target_modules),
         headline_metric(a.card.metrics), time.strftime("%Y-%m-%d", time.localtime(a.card.created))]
        for a in adapters
    ]


def card_markdown(stored: Any, store: str = "") -> str:
    """The whole card of one adapter, with its held-out examples; `store`: shipped or yours."""
    card = stored.card
    where = {"shipped": t("card.store_shipped"), "yours": t("card.store_yours")}.get(store, "")
    lines = [
        f"### {card.name}", term("description", card.description), "",
        t("card.task", task=term("task", card.task), type=stored.peft_type, rank=card.rank, alpha=f"{card.alpha:g}")
        + where,
        t("card.targets", targets=", ".join(card.target_modules)),
        t("card.base", base=card.base_model, fingerprint=card.base_fingerprint[:12]),
        t("card.created", created=time.strftime("%Y-%m-%d %H:%M", time.localtime(card.created))),
    ]
    if card.dataset:
        summary = {k: v for k, v in card.dataset.items() if k != "examples"}
        lines.append(t("card.dataset", dataset=json.dumps(summary, ensure_ascii=False)[:400]))
    metrics = card.metrics or {}
    keys = sorted({k for side in ("adapter", "base") for k in (metrics.get(side) or {})})
    if keys:
        lines += ["", t("card.metrics_header"), "|---|---|---|"]
        for key in keys:
            row = [(metrics.get(side) or {}).get(key, "") for side in ("base", "adapter")]
            row = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
            lines.append(f"| {term('metric', key)} | {row[0]} | {row[1]} |")
    if card.examples:
        lines += ["", t("card.examples"), "", t("card.examples_header"), "|---|---|---|"]
        for example in card.examples[:5]:
            cells = [str(example.get(k, "")).replace("|", "\\|").replace("\n", " ")[:300]
                     for k in ("prompt", "base", "adapter")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class AdaptersTab(Tab):
    title, tab_id = "tab.adapters", "adapters"

    @property
    def enabled(self) -> bool:
        return self.runtime.config.adapters.enabled

    def _registry(self) -> Any:
        self.runtime.wait_ready()
        if self.runtime.adapters is None:
            raise UserFacingError(t("adapters.unavailable", reason=self.runtime.adapters_error or t("adapters.not_loaded")))
        return self.runtime.adapters

    def listing(self) -> tuple:
        """Table, name choices and the not-loaded notes, as they are now."""
        registry = self.runtime.adapters
        if registry is None:
            reason = self.runtime.adapters_error or (t("adapters.loading") if not self.runtime.ready
                                                     else t("adapters.not_loaded"))
            return (table_value([], adapter_headers()), gr.Dropdown(choices=[]),
                    t("adapters.store_state", reason=reason))
        adapters = registry.adapters()
        names = [a.name for a in adapters]
        notes = "\n".join(f"- {note}" for note in registry.notes)
        where = (f"`{registry.store.root}`" if registry.user_store is registry.store else
                 t("adapters.two_stores", shipped=registry.store.root, yours=registry.user_store.root))
        head = (t("adapters.fit", n=len(adapters), where=where) if adapters else t("adapters.none_fit", where=where))
        return (table_value(adapter_rows(adapters, registry.store_label), adapter_headers()),
                gr.Dropdown(choices=names, value=names[0] if names else None),
                head + (f"\n\n{t('adapters.not_offered')}\n{notes}" if notes else ""))

    def build(self) -> None:
        runtime = self.runtime
        notes = gr.Markdown(elem_id="mmchat-adapters-notes")
        table = gr.Dataframe(headers=adapter_headers(), interactive=False, wrap=False, label=ui("adapters.table"),
                             elem_id="mmchat-adapters-table")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                choice = gr.Dropdown(label=ui("adapters.adapter"), choices=[], elem_id="mmchat-adapters-choice")
                card = gr.Markdown(elem_id="mmchat-adapters-card")
            with gr.Column(scale=2, min_width=260):
                with gr.Row():
                    export_btn = gr.Button(ui("adapters.export"), size="sm", elem_id="mmchat-adapters-export")
                    merge_btn = gr.Button(ui("adapters.merge"), size="sm", elem_id="mmchat-adapters-merge")
                confirm = gr.Checkbox(label=ui("adapters.confirm_delete"), value=False)
                delete_btn = gr.Button(ui("shared.delete"), variant="stop", size="sm", elem_id="mmchat-adapters-delete")
                result = gr.Markdown(elem_id="mmchat-adapters-result")
                download = gr.File(label=ui("adapters.exported"), visible=False, interactive=False)
                upload = gr.File(label=ui("adapters.upload"),
                                 file_types=[".zip"], elem_id="mmchat-adapters-upload")
                upload_name = gr.Textbox(label=ui("adapters.upload_name"), max_length=48)
                upload_btn = gr.Button(ui("adapters.add"), variant="primary", size="sm", elem_id="mmchat-adapters-add")

        def show_card(name: str | None) -> str:
            if not name:
                return ""
            try:
                registry = self._registry()
                stored = registry.get(name)
                return card_markdown(stored, registry.store_label(stored))
            except UserFacingError as err:
                return localize(str(err))

        def export(name: str | None, request: gr.Request):
            from mmchat.adapters.bundle import export_adapter_zip

            try:
                stored = self._registry().get(name or "")
                folder = export_folder(runtime, request.session_hash or "no-session")
                folder.mkdir(parents=True, exist_ok=True)
                path = export_adapter_zip(stored, folder / f"{stored.name}-{int(time.time())}.zip")
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return gr.File(visible=False), localize(str(err))
            return gr.File(value=str(path), visible=True), t("adapters.exported_msg", name=stored.name)

        def merge(name: str | None, progress=gr.Progress()):
            from mmchat.adapters.merge import merge_adapter
            from mmchat.backends.registry import load_base_copy, loaded_preset

            try:
                stored = self._registry().get(name or "")
                progress(0.1, desc=t("adapters.merge_loading"))
                preset = loaded_preset(runtime.config.model, runtime.backend.info.preset)  # not an auto fallback's
                model, processing = load_base_copy(preset, runtime.config.cache_dir())
                progress(0.5, desc=t("adapters.merge_writing"))
                out = runtime.data_dir / "merged" / f"{stored.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                merged = merge_adapter(model, processing, stored, out)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return localize(str(err))
            except Exception as err:
                log.exception("merge failed")
                return t("adapters.merge_failed", error=f"{err.__class__.__name__}: {err}")
            return t("adapters.merged", summary=localize(merged.summary))

        def delete(name: str | None, sure: bool):
            if not sure:
                gr.Warning(t("shared.tick_to_delete"))
                return (*self.listing(), t("shared.nothing_deleted"), False)
            try:
                self._registry().delete(name or "")
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return (*self.listing(), localize(str(err)), False)
            return (*self.listing(), t("adapters.deleted", name=name), False)

        def add(upload_item: Any, name: str):
            from mmchat.adapters.bundle import import_adapter_zip, module_shapes

            if not upload_item:
                return (*self.listing(), t("adapters.choose_zip"), None)
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
                gr.Warning(localize(str(err)))
                return (*self.listing(), t("adapters.refused", error=localize(str(err))), None)
            except Exception as err:
                log.exception("adapter upload failed")
                return (*self.listing(), t("adapters.upload_failed", error=f"{err.__class__.__name__}: {err}"), None)
            return (*self.listing(), t("adapters.added", name=stored.name), None)

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
