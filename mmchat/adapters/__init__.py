"""LoRA adapters: the host that loads and switches them on one model (`host`).

The adapter store, cards and registry come next (see the Adapters issue); UI modules may
import this package: it imports no torch at import time.
"""
