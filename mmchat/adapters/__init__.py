"""LoRA adapters: cards (`card`), the folder store (`store`), and the host that loads and
switches them on one model (`host`).

The registry that ties the store to the loaded base and the UI, training and merging come
next (see the Adapters issue). UI modules may import this package: it imports no torch at
import time.
"""
