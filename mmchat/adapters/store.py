"""The adapter store: one folder per LoRA adapter, complete or not there at all.

Each folder holds peft's standard files (`adapter_config.json`, `adapter_model.safetensors`,
loadable with plain `PeftModel.from_pretrained(base, folder)`) plus `adapter_card.json`.
`publish` builds a folder under a temporary name, writes the card last and renames it into
place (`mmchat.files.staged_folder`), so a training run or upload killed part-way leaves no
listed adapter. The staged folder's name carries the publishing process's pid, and opening a
store removes only leftovers of processes that are gone (`mmchat.files.remove_stale_staging`),
so a trainer process and the server can share a store without deleting each other's publish.
`scan` lists the complete folders and says why each other one is skipped (no card, a bad card,
missing or pickled weights, a projector or soft prompt its card names but the folder lacks, a config that does
not parse, a folder name that differs from the card's name); `compatible` keeps those trained
on the loaded base and says for the others which base they need. The adapter's type and
targets come from its card and config, never from its folder name.

Two kinds of store: the shipped one (the project's `adapters/`, opened `read_only`: the app
never publishes into it, deletes from it or creates it) and the user's (under the data dir),
opened with `shipped=` that store so a name the shipped store holds is refused at publish.
Which store lists what, and the shadowing rule, is `mmchat.adapters.registry`'s job. No
torch: loading is `mmchat.adapters.host`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmchat.adapters.card import CARD_FILE, NAME, AdapterCard, CardError
from mmchat.errors import UserFacingError
from mmchat.files import remove_stale_staging, staged_folder

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class StoredAdapter:
    card: AdapterCard
    folder: Path
    peft_type: str  # from adapter_config.json, e.g. "LORA"

    @property
    def name(self) -> str:
        return self.card.name


class AdapterStore:
    def __init__(self, root: str | Path, *, read_only: bool = False, shipped: "AdapterStore | None" = None) -> None:
        """`read_only`: the shipped store (never created, written or cleaned here); `shipped`: the
        store whose names this one may not take."""
        self.root = Path(root)
        self.read_only = read_only
        self.shipped = shipped
        if read_only:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.root)  # publishes killed part-way, never one still running

    def folder_names(self) -> list[str]:
        """Every adapter folder's name, complete or not (staging folders and dot-files aside)."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:  # a read-only store that is not there holds nothing
            return []

    def scan(self) -> tuple[list[StoredAdapter], list[tuple[str, str]]]:
        """`(complete adapters by name, [(folder, why it is skipped)])`."""
        found: list[StoredAdapter] = []
        skipped: list[tuple[str, str]] = []
        for folder in (self.root / name for name in self.folder_names()):
            try:
                found.append(self.read(folder))
            except UserFacingError as err:
                skipped.append((folder.name, str(err)))
        return found, skipped

    def read(self, folder: Path, name: str | None = None) -> StoredAdapter:
        """One folder, checked: card, config and safetensors weights present and consistent.

        `name`: the name the folder has (or will have once published); default its own.
        """
        name = name or folder.name
        card_path = folder / CARD_FILE
        if not card_path.is_file():
            raise UserFacingError(f"{name}: no {CARD_FILE} (an incomplete adapter)")
        try:
            card = AdapterCard.from_json(card_path.read_text(encoding="utf-8"))
        except (CardError, UnicodeDecodeError) as err:
            raise UserFacingError(f"{name}: {CARD_FILE}: {err}") from None
        if card.name != name:
            raise UserFacingError(f"{name}: its card names it {card.name!r}; the folder must have that name")
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise UserFacingError(f"{name}: pickled weights (.bin/.pt) are refused; accepted: {WEIGHTS_FILE}")
        if not (folder / WEIGHTS_FILE).is_file():
            raise UserFacingError(f"{name}: no {WEIGHTS_FILE}")
        for part, entry, writer in (("a projector", card.projector, "save_projector"),
                                    ("a soft prompt", card.soft_prompt, "save_soft_prompt")):
            if entry and not (folder / entry["file"]).is_file():
                raise UserFacingError(f"{name}: its card names {part}, {entry['file']}, which the folder "
                                      f"does not hold (accepted: the safetensors file {writer} writes)")
        try:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserFacingError(f"{name}: {CONFIG_FILE} is missing or not JSON ({err})") from None
        if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
            raise UserFacingError(f"{name}: {CONFIG_FILE} has no peft_type")
        return StoredAdapter(card, folder, config["peft_type"])

    def compatible(self, fingerprint: str, base_model: str = "") -> tuple[list[StoredAdapter], list[str]]:
        """Adapters trained on the base with `fingerprint`, and a line for each one that is not
        (naming both bases; `base_model` is the loaded base's source)."""
        return split_by_base(self.scan()[0], fingerprint, base_model)

    def publish(self, card: AdapterCard, write_weights: Callable[[Path], None]) -> StoredAdapter:
        """Write an adapter: `write_weights(folder)` puts peft's files there, then the card, then rename."""
        if not NAME.fullmatch(card.name):
            raise UserFacingError(f"adapter name {card.name!r} is not valid; use a-z, 0-9, '-', '_' (at most 48)")
        if self.read_only:
            raise UserFacingError(f"{self.root} holds the shipped adapters and is read-only; "
                                  f"{card.name!r} goes to the user store")
        self.check_not_shipped(card.name)
        target = self.root / card.name
        if target.exists():
            raise UserFacingError(f"an adapter named {card.name!r} already exists; delete it or choose another name")
        with staged_folder(target) as staging:
            write_weights(staging)
            (staging / CARD_FILE).write_text(card.to_json(), encoding="utf-8")  # last: marks it complete
            self.read(staging, name=card.name)  # complete before it becomes visible
        return self.read(target)

    def check_not_shipped(self, name: str) -> None:
        """Refuse `name` when the shipped store holds a folder of that name."""
        if self.shipped is not None and name in self.shipped.folder_names():
            raise UserFacingError(f"{name!r} is the name of a shipped adapter; choose another name")

    def delete(self, name: str) -> None:
        folder = self.root / name
        if not NAME.fullmatch(name) or not folder.is_dir():
            raise UserFacingError(f"no adapter named {name!r} in the store")
        if self.read_only:
            raise UserFacingError(f"{name!r} is a shipped adapter ({self.root}) and read-only; "
                                  "only adapters you uploaded or trained can be deleted")
        shutil.rmtree(folder)


def split_by_base(
    adapters: list[StoredAdapter], fingerprint: str, base_model: str = ""
) -> tuple[list[StoredAdapter], list[str]]:
    """`adapters` trained on the base with `fingerprint`, and a line naming both bases for each other one."""
    usable = [a for a in adapters if a.card.base_fingerprint == fingerprint]
    loaded = f"the loaded base {base_model}" if base_model else "the loaded base"
    refused = [
        f"{a.name}: trained on {a.card.base_model} (fingerprint {a.card.base_fingerprint[:12]}…), "
        f"not {loaded} (fingerprint {fingerprint[:12]}…)"
        for a in adapters if a.card.base_fingerprint != fingerprint
    ]
    return usable, refused
