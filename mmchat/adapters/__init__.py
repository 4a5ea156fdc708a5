"""LoRA adapters: cards (`card`), the folder store (`store`), the host that loads and
switches them on one model (`host`), zip import/export with validation (`bundle`), and
merging into a base copy (`merge`).

The registry that ties the store to the loaded base and the UI, and training, come next (see
the Adapters issue). UI modules may import this package: it imports no torch at
import time.
"""
