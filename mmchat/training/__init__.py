"""Training LoRA adapters: configuration, examples rendered as chat renders them, batching,
the engine that trains on a copy of the base and publishes into the adapter store, the
project's own datasets, and held-out evaluation through the real offline backend.

Modules: `config` (TrainingConfig), `examples` (Example, Renderer: answer-only labels),
`collate`, `engine` (train_adapter), `builtin_data` (seeded generators), `evaluate`
(format and answer checks), `shipped` (`make adapters`), `measure` (loop vs Trainer).
Importing this package imports no torch; the UI and the CLI (`python -m mmchat.train`) use it.
"""
