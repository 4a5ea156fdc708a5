"""The adapter registry: the store's adapters that fit the loaded base, loaded on its host.

`sync()` scans the store, keeps the adapters whose card names the loaded base's fingerprint,
loads the new ones on the backend's `AdapterHost` (never reloading the base), unloads the ones
deleted from the store, and keeps one line per adapter it did not load: skipped folders
(incomplete, bad card, pickled weights), adapters trained on another base (the line names both
bases) and adapters peft could not load. `choices()` is what the UI lists. Adding (training,
upload) and deleting go through the store and then `sync()`, so the registry never lists an
adapter the store does not hold. No torch at import time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from mmchat.adapters.host import BASE
from mmchat.adapters.store import AdapterStore, StoredAdapter, split_by_base
from mmchat.errors import UserFacingError

log = logging.getLogger(__name__)

BASE_LABEL = "base — the model without an adapter"


class AdapterRegistry:
    def __init__(self, store: AdapterStore, backend: Any) -> None:
        self.store = store
        self.backend = backend
        self.fingerprint = backend.base_fingerprint() if backend.info.supports_adapters else ""
        self._loaded: dict[str, StoredAdapter] = {}
        self.notes: list[str] = []  # why each adapter in the store is not offered
        self._lock = threading.Lock()

    @property
    def host(self) -> Any:
        return self.backend.adapters

    def sync(self) -> "AdapterRegistry":
        """Bring the loaded adapters in line with the store (see the module docstring)."""
        with self._lock:
            if not self.backend.info.supports_adapters:
                self.notes = [f"the {self.backend.info.preset} model takes no LoRA adapters"]
                return self
            found, skipped = self.store.scan()  # read every card once
            usable, refused = split_by_base(found, self.fingerprint, self.backend.info.source)
            notes = [why for _, why in skipped]  # each reason starts with its folder's name
            notes += refused
            wanted = {a.name: a for a in usable}
            for name in list(self._loaded):
                if name not in wanted or wanted[name].folder != self._loaded[name].folder:
                    self.host.unload(name)
                    del self._loaded[name]
            for name in [n for n in self.host.names if n not in self._loaded]:  # loaded by another registry
                self.host.unload(name)
            for name, stored in wanted.items():
                if name in self._loaded:
                    self._loaded[name] = stored  # the card may have changed
                    continue
                try:
                    self.host.load(name, stored.folder)
                except Exception as err:  # a corrupt file must not stop the others or the app
                    log.warning("adapter %s did not load: %s", name, err)
                    notes.append(f"{name}: could not be loaded ({err.__class__.__name__}: {err})")
                    continue
                self._loaded[name] = stored
            self.notes = notes
        return self

    def adapters(self) -> list[StoredAdapter]:
        """The loaded adapters, by name."""
        return [self._loaded[name] for name in sorted(self._loaded)]

    def get(self, name: str) -> StoredAdapter:
        if name not in self._loaded:
            available = ", ".join(sorted(self._loaded)) or "none"
            raise UserFacingError(f"no adapter named {name!r} is loaded; loaded: {available}")
        return self._loaded[name]

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a dropdown: the bare base first, then each adapter's one line."""
        return [(BASE_LABEL, BASE)] + [(f"{a.name} — {a.card.description}", a.name) for a in self.adapters()]

    def names(self) -> list[str]:
        return [BASE] + sorted(self._loaded)

    def delete(self, name: str) -> None:
        """Delete an adapter from the store and unload it (waits for a generation using it)."""
        self.get(name)
        self.store.delete(name)
        self.sync()

    def summary(self) -> str:
        """'3 adapters' for the status line ('' when adapters are off for this model)."""
        if not self.backend.info.supports_adapters:
            return ""
        count = len(self._loaded)
        return f"{count} adapter{'' if count == 1 else 's'}"
