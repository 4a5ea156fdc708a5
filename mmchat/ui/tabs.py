"""What every tab of the app is: one object with a build step and a wire step.

`build()` runs inside the tab's `gr.Tab` and lays out its components and its own events;
`wire(app)` runs once every tab exists and connects this tab to the others through their named
attributes (e.g. the Chat tab refreshes its adapter list after the Adapters tab's `changed`
events). A tab lists the events after which what it shows elsewhere may be stale in `changed`;
the app refreshes the status line after them. `upload_path` reads the path of an uploaded
file and `export_folder` names a browser session's export folder, for every tab. Nothing here
imports torch.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from mmchat.runtime import Runtime


def upload_path(item: Any) -> str:
    """The local path of an uploaded file as gradio hands it over: a path (str), a FileData-like
    dict or object, depending on the component and on whether a browser or a client sent it."""
    if isinstance(item, dict):
        return item.get("path") or item.get("name") or ""
    return str(getattr(item, "path", item))


# Names each browser session's export folder: unguessable without this process's secret.
_EXPORT_KEY = secrets.token_bytes(32)


def export_folder(runtime: Runtime, session_hash: str) -> Path:
    """The export folder of one browser session (gradio's session hash)."""
    token = hmac.new(_EXPORT_KEY, session_hash.encode("utf-8"), hashlib.sha256).hexdigest()[:40]
    return runtime.export_dir / token


class Tab:
    title: str = ""  # a key of mmchat.ui.strings
    tab_id: str = ""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.container: Any = None  # the gr.Tab it was built in (set by the app)
        self.changed: list[Any] = []  # events after which other tabs (and the status) refresh

    @property
    def enabled(self) -> bool:
        return True

    def build(self) -> None:
        raise NotImplementedError

    def wire(self, app: "AppTabs") -> None:
        """Connect to the other tabs (default: nothing to connect)."""


@dataclass
class AppTabs:
    """The built app as the tabs see it in their wire step."""

    demo: gr.Blocks
    status: gr.Markdown
    tabs: list[Tab] = field(default_factory=list)
    tabs_component: Any = None  # the gr.Tabs holding them (to switch tab from an event)

    def find(self, cls: type) -> Any:
        """The enabled tab of that class, or None."""
        return next((tab for tab in self.tabs if isinstance(tab, cls) and tab.enabled), None)
