"""Shared test set-up: nothing may download, so hub access is switched off for every test.

It fixes the environment and holds the fixtures several test files share: the real photos,
the model and encoder fixtures (tiny LLaVA, offline SmolLM2, stand-in encoder, text embedder), a
knowledge base factory, a launcher for the real app, a spy on what a backend prepares, and a
maker of LoRA adapters (random, non-zero weights, valid cards) for a backend's base.
Fixtures used by one file live in that file.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cat_image():
    """A real photo of a cat (scikit-image's `chelsea`), as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="session")
def coffee_image():
    """A real photo of a cup of coffee (scikit-image's `coffee`), as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def model_cache_dir():
    """Where converted weights are cached across tests (and across runs, to save time)."""
    from pathlib import Path

    path = Path(os.environ.get("MMCHAT_CACHE_DIR", "~/.cache/mmchat")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_backend(model_cache_dir):
    """The tiny random LLaVA (built from configs) behind the real transformers backend."""
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)


@pytest.fixture(scope="session")
def offline_backend(model_cache_dir):
    """The offline stand-in on real shipped weights (SmolLM2-135M + EfficientNet-Lite0)."""
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS

    return OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)


@pytest.fixture(scope="session")
def standin_encoder(model_cache_dir):
    from mmchat.config import EncoderConfig
    from mmchat.vision import load_image_encoder

    return load_image_encoder(EncoderConfig(kind="standin"), cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def launch_app():
    """Start the real app on a free loopback port with given models; returns its URL.

    `launch_app(tmp_dir, backend, encoder, preset=..., generation=..., knowledge={...},
    knowledge_base=kb, adapters={"path": ...})` builds the config the way the CLI would, serves it in this process, and
    closes every server at the end. Without `knowledge_base` the app opens its own, empty,
    knowledge base under `tmp_dir` (no demo corpus unless `knowledge={"seed_demo": True}`).
    """
    import socket

    from mmchat.config import load_config
    from mmchat.runtime import Runtime
    from mmchat.ui.app import build_app, launch_kwargs

    demos = []

    def launch(data_dir, backend, encoder, preset: str, generation: dict, knowledge: dict | None = None,
               knowledge_base=None, adapters: dict | None = None) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # The knowledge base lives in the test's own folder, empty unless a test asks for more.
        knowledge = {"path": str(data_dir / "knowledge"), "seed_demo": False, **(knowledge or {})}
        config = load_config(
            env={},
            overrides={"server": {"port": port}, "model": {"preset": preset}, "knowledge": knowledge,
                       "generation": generation, "": {"data_dir": str(data_dir)}, "adapters": adapters or {}},
        )
        runtime = Runtime(config, backend=backend, encoder=encoder, knowledge=knowledge_base)
        demo = build_app(config, runtime)
        demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(config, runtime))
        demos.append(demo)
        return f"http://127.0.0.1:{port}/"

    yield launch
    for demo in demos:
        demo.close()


@pytest.fixture(scope="session")
def text_embedder():
    """The default text embedder (USE multilingual, shipped) as a LlamaIndex embedding."""
    from mmchat.knowledge.embeddings import load_text_embedder

    return load_text_embedder("auto")


@pytest.fixture
def make_knowledge(tmp_path, standin_encoder, text_embedder):
    """`make_knowledge(**config)` opens a real knowledge base (embedded Chroma in tmp_path)."""
    from mmchat.config import KnowledgeConfig
    from mmchat.knowledge.base import KnowledgeBase

    def make(**values):
        values.setdefault("path", str(tmp_path / "knowledge"))
        return KnowledgeBase(KnowledgeConfig(**values), encoder=standin_encoder, text_embedder=text_embedder)

    return make


@pytest.fixture
def spy(tiny_backend, monkeypatch):
    """Record what the tiny backend is asked to prepare, `(messages, images)` per call (the
    real prepare still runs)."""
    calls = []
    real = tiny_backend.prepare

    def prepare(messages, images, adapter=None):
        calls.append((messages, list(images)))
        return real(messages, images, adapter=adapter)

    monkeypatch.setattr(tiny_backend, "prepare", prepare)
    return calls


@pytest.fixture(scope="session")
def make_adapters(model_cache_dir):
    """`make_adapters(backend, root, {"name": seed, ...})` publishes LoRA adapters for `backend`'s
    base into the store at `root` and returns it: real peft adapters whose weights change the
    answer (init_lora_weights=False: B is not zero), with cards naming that base."""
    def make(backend, root, seeds: dict, rank: int = 4, targets=("q_proj", "v_proj")):
        import torch
        from peft import LoraConfig, get_peft_model

        from mmchat.adapters.card import AdapterCard
        from mmchat.adapters.store import AdapterStore
        from mmchat.backends.registry import load_base_copy
        from mmchat.config import PRESETS

        store = AdapterStore(root)
        for name, seed in seeds.items():
            model, _ = load_base_copy(PRESETS[backend.info.preset], model_cache_dir)
            torch.manual_seed(seed)
            config = LoraConfig(r=rank, lora_alpha=64, target_modules=list(targets), init_lora_weights=False)
            peft_model = get_peft_model(model, config)
            card = AdapterCard(name=name, description=f"test adapter {name}", task="test",
                               base_model=backend.info.source, base_fingerprint=backend.base_fingerprint(),
                               rank=rank, alpha=64.0, target_modules=tuple(targets))
            store.publish(card, lambda folder: peft_model.save_pretrained(str(folder)))
        return store

    return make
