"""The adapter registry: the adapters of both stores that fit the loaded base, loaded on its host.

Two stores: the shipped one (the project's `adapters/`, read-only to the app) and the user's
(under the data dir), where uploads and training publish (`user_store`; given one store, it is
both, as in tests and tools that keep everything in one folder). `sync()` scans both, keeps the
adapters whose card names the loaded base's fingerprint, loads the new ones on the backend's
`AdapterHost` (never reloading the base), unloads the ones deleted from a store, and keeps one
line per adapter it did not load: skipped folders (incomplete, bad card, pickled weights),
adapters trained on another base (the line names both bases), adapters peft could not load,
and a user adapter named like a shipped one (it never shadows the shipped one; publish refuses
such names, so only a folder copied by hand gets there). `choices()` is what the UI lists;
`store_label` says which store an adapter came from; `reserved_names` is every name either store
holds, for refusing a taken name before a training run starts. Adding (training, upload) goes
through `user_store` and then `sync()`; deleting works on user adapters only. No torch at
import time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from mmchat.adapters.host import BASE
from mmchat.adapters.store import AdapterStore, StoredAdapter, split_by_base
from mmchat.errors import UserFacingError

log = logging.getLogger(__name__)

BASE_LABEL = "base — the model without an adapter"


SHIPPED, YOURS = "shipped", "yours"


class AdapterRegistry:
    def __init__(self, store: AdapterStore, backend: Any, user_store: AdapterStore | None = None) -> None:
        """`store`: the shipped adapters; `user_store`: where uploads and training publish
        (default: `store` itself)."""
        self.store = store
        self.user_store = user_store if user_store is not None else store
        if self.user_store is not store and self.user_store.shipped is None:
            self.user_store.shipped = store  # publish refuses the shipped names
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
            notes = [why for _, why in skipped]  # each reason starts with its folder's name
            if self.user_store is not self.store:
                shipped_names = set(self.store.folder_names())
                user_found, user_skipped = self.user_store.scan()
                notes += [why for folder, why in user_skipped if folder not in shipped_names]
                for folder in sorted(shipped_names & set(self.user_store.folder_names())):
                    notes.append(f"{folder}: is the name of a shipped adapter; your copy in {self.user_store.root} "
                                 "is not loaded (rename it and the name in its card, or remove that folder)")
                found += [a for a in user_found if a.name not in shipped_names]
            usable, refused = split_by_base(found, self.fingerprint, self.backend.info.source)
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

    def choices(
        self, base_label: str = BASE_LABEL, describe: Callable[[str], str] = lambda description: description,
    ) -> list[tuple[str, str]]:
        """(label, value) pairs for a dropdown: the bare base first, then each adapter's one line
        (`base_label` and `describe` let the UI word them in the visitor's language)."""
        return [(base_label, BASE)] + [(f"{a.name} — {describe(a.card.description)}", a.name) for a in self.adapters()]

    def names(self) -> list[str]:
        return [BASE] + sorted(self._loaded)

    def store_label(self, adapter: StoredAdapter) -> str:
        """"shipped" or "yours": the store `adapter` was read from (one store: "yours")."""
        if self.user_store is not self.store and adapter.folder.parent == self.store.root:
            return SHIPPED
        return YOURS

    def reserved_names(self) -> set[str]:
        """Every adapter name either store holds (complete or not, loaded or not)."""
        return set(self.store.folder_names()) | set(self.user_store.folder_names())

    def delete(self, name: str) -> None:
        """Delete one of the user's adapters and unload it (waits for a generation using it).

        A shipped adapter is refused (read-only); a user adapter that is not loaded (another
        base, incomplete) can be deleted too, being the user's own folder.
        """
        if self.user_store is not self.store and name in self.store.folder_names():
            raise UserFacingError(f"{name!r} is a shipped adapter ({self.store.root}) and read-only; "
                                  "only adapters you uploaded or trained can be deleted")
        if name not in self._loaded and name not in self.user_store.folder_names():
            self.get(name)  # raises, naming the loaded ones
        self.user_store.delete(name)
        self.sync()

    def summary(self) -> str:
        """'3 adapters' for the status line ('' when adapters are off for this model)."""
        if not self.backend.info.supports_adapters:
            return ""
        count = len(self._loaded)
        return f"{count} adapter{'' if count == 1 else 's'}"
