"""LLaVA training targets: LoRA on the language model, the projector, LoRA on the vision tower.

Real parts: the tiny random LLaVA (built from configs) trained by the engine on real pictures
(the built-in shapes dataset's PNGs, through the processor as chat sends them), real peft,
adapters published into a real AdapterStore and loaded back by the LLaVA backend's
AdapterHost; the offline SmolLM2 for the offline refusal. Nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: see tests/test_training.py

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mmchat.adapters.store import AdapterStore  # noqa: E402
from mmchat.backends.registry import load_base_copy  # noqa: E402
from mmchat.config import PRESETS  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.config import TrainingConfig  # noqa: E402

TINY = PRESETS["tiny"]
QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]


def _config(**values) -> TrainingConfig:
    fields = dict(name="looker", description="a LLaVA targets test", rank=4, alpha=8, learning_rate=0.05,
                  max_steps=3, batch_size=4, seed=3, max_length=512)
    fields.update(values)
    return TrainingConfig(**fields)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from mmchat.training import shapes

    return shapes.generate(8, seed=1, out_dir=tmp_path_factory.mktemp("shapes") / "images")


def test_an_example_with_a_picture_is_encoded_as_chat_sends_it(pictures, tiny_backend):
    from PIL import Image

    from mmchat.config import GenerationDefaults
    from mmchat.prompt import Turn, render_messages
    from mmchat.training.examples import IGNORE, Example, Renderer
    from mmchat.training.pixels import PixelEncoded, PixelRenderer

    system = GenerationDefaults().system_prompt
    renderer = PixelRenderer(TINY.kind, tiny_backend.processor, system, 512)
    example = pictures[0]
    encoded = renderer.encode(example)
    messages, _ = render_messages(system, [Turn("user", example.question, ("picture",))])
    with Image.open(example.images[0]) as picture:
        sent = tiny_backend.prepare(messages, [picture.convert("RGB")]).inputs
    n = encoded.prompt_length
    assert encoded.input_ids[:n] == sent["input_ids"][0].tolist()  # image tokens expanded, as chat sends them
    assert encoded.labels[:n] == [IGNORE] * n and all(label != IGNORE for label in encoded.labels[n:])
    assert isinstance(encoded, PixelEncoded) and torch.equal(encoded.pixel_values, sent["pixel_values"])
    text_only = Example("Name a colour.", "Blue.")
    assert renderer.encode(text_only) == Renderer(TINY.kind, tiny_backend.processor, system, 512).encode(text_only)


def _trainable_changes(targets: tuple[str, ...], examples, cache_dir) -> tuple[set[str], set[str]]:
    """(names of the parameters that require grad, names of the parameters training changed)."""
    from mmchat.config import GenerationDefaults
    from mmchat.training.engine import prepare_model, run_loop
    from mmchat.training.pixels import PixelRenderer

    model, processor = load_base_copy(TINY, cache_dir)
    config = _config(llava_targets=targets)
    renderer = PixelRenderer(TINY.kind, processor, GenerationDefaults().system_prompt, config.max_length)
    encoded = [renderer.encode(example) for example in examples]
    peft_model = prepare_model(model, TINY.kind, config)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    losses = run_loop(peft_model, encoded, config, processor.tokenizer.pad_token_id or 0)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    return trainable, changed


def test_the_projector_target_trains_the_projector_and_the_language_lora_only(pictures, model_cache_dir):
    trainable, changed = _trainable_changes(("language", "projector"), pictures, model_cache_dir)
    projector = {n for n in trainable if "multi_modal_projector" in n}
    assert projector and all(".modules_to_save." in n for n in projector)  # a full copy, trained
    assert {n for n in trainable - projector} and all("language_model" in n and "lora_" in n
                                                      for n in trainable - projector)
    assert changed == trainable  # every trained weight moved; the base (vision tower included) did not


def test_the_vision_target_puts_lora_on_the_layers_that_feed_the_projector(pictures, model_cache_dir):
    trainable, changed = _trainable_changes(("vision",), pictures, model_cache_dir)
    # The tiny LLaVA reads vision layer 0's output (vision_feature_layer -2 of 2 layers): layer 1 gets no LoRA.
    pattern = re.compile(r".*vision_tower.*\.layers\.0\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.lora_[AB]\..*")
    assert trainable and all(pattern.fullmatch(n) for n in trainable), sorted(trainable)
    assert len(trainable) == 8  # q, k, v, out: A and B each
    assert changed == trainable


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


def test_published_projector_and_vision_adapters_load_and_switch_per_message(pictures, model_cache_dir, tmp_path,
                                                                              cat_image):
    from peft import PeftModel

    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import GenerationDefaults
    from mmchat.training.engine import train_adapter

    store = AdapterStore(tmp_path / "adapters")
    events: list[dict] = []
    stored = {targets[-1]: train_adapter(_config(name=f"tiny-{targets[-1]}", llava_targets=targets, sample_every=3),
                                         pictures, store, preset=TINY, cache_dir=model_cache_dir,
                                         sample_examples=pictures[:1],
                                         on_event=lambda event, name=targets[-1]: events.append({**event, "name": name}))
              for targets in (("language", "projector"), ("vision",))}
    samples = {event["name"]: event["samples"][0] for event in events if event["type"] == "sample"}
    projector_card = stored["projector"].card
    assert projector_card.metrics["training"]["hyperparameters"]["llava_targets"] == ["language", "projector"]
    backend = LlavaBackend.from_preset(TINY, model_cache_dir)
    inputs = backend.prepare(QUESTION, [cat_image]).inputs
    base = _logits(backend.model, inputs)
    for name, adapter in stored.items():
        backend.adapters.load(name, adapter.folder)
    answers = {}
    for name in ("projector", "vision", None, "projector"):  # per message, back and forth
        with backend.adapters.activate(name) as model:
            answers.setdefault(name, []).append(_logits(model, inputs))
    assert backend.adapters._layers == []  # modules_to_save: peft's own switch (see AdapterHost._switch)
    assert torch.equal(answers[None][0], base)
    assert torch.equal(answers["projector"][0], answers["projector"][1])
    for name, adapter in stored.items():
        assert (answers[name][0] - base).abs().max() > 1e-3, name  # the adapter changes the answer
        alone = PeftModel.from_pretrained(load_base_copy(TINY, model_cache_dir)[0], str(adapter.folder)).eval()
        torch.testing.assert_close(answers[name][0], _logits(alone, inputs), rtol=1e-5, atol=1e-5)
    # The sample answers written during training are what chat with the adapter answers.
    from PIL import Image

    from mmchat.backends.base import GenerationParams
    from mmchat.prompt import Turn, render_messages

    params = GenerationParams(max_new_tokens=32, temperature=0.0)
    messages, _ = render_messages(GenerationDefaults().system_prompt, [Turn("user", pictures[0].question, ("p",))])
    with Image.open(pictures[0].images[0]) as picture:
        picture = picture.convert("RGB")
    for name in stored:
        chat = "".join(backend.stream(backend.prepare(messages, [picture], adapter=name), params)).strip()
        assert samples[name]["answer"] == chat, name
    # Exported and uploaded (checked against the base's modules and shapes) like any adapter.
    from mmchat.adapters.bundle import export_adapter_zip, import_adapter_zip, module_shapes

    shapes = module_shapes(load_base_copy(TINY, model_cache_dir)[0])
    elsewhere = AdapterStore(tmp_path / "elsewhere")
    for name, adapter in stored.items():
        zipped = export_adapter_zip(adapter, tmp_path / f"{name}.zip")
        imported = import_adapter_zip(zipped, elsewhere, backend.base_fingerprint(), shapes, base_model=TINY.source)
        assert (imported.folder / "adapter_model.safetensors").read_bytes() == \
            (adapter.folder / "adapter_model.safetensors").read_bytes()


def test_sample_answers_show_the_model_the_picture(pictures, model_cache_dir):
    """The tiny model's greedy text barely depends on the image, so the vision tower's own
    forward hook says whether a sample answer looked at it."""
    from mmchat.config import GenerationDefaults
    from mmchat.training.engine import _sampler
    from mmchat.training.pixels import PixelRenderer

    model, processor = load_base_copy(TINY, model_cache_dir)
    renderer = PixelRenderer(TINY.kind, processor, GenerationDefaults().system_prompt, 512)
    seen = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    try:
        answers = _sampler(renderer, pictures[:2], max_new_tokens=3)(model.eval())
    finally:
        hook.remove()
    assert [a["prompt"] for a in answers] == [p.question for p in pictures[:2]]
    assert [tuple(shape) for shape in seen] == [tuple(renderer.pixel_values(p).shape) for p in pictures[:2]]


@pytest.mark.parametrize("values, message", [
    ({"llava_targets": ("eyes",)}, "llava_targets ('eyes',) is not valid; accepted: a non-empty list of distinct names "
                                   "among ['language', 'projector', 'vision']"),
    ({"llava_targets": ()}, "llava_targets () is not valid"),
    ({"llava_targets": ("vision", "vision")}, "llava_targets ('vision', 'vision') is not valid"),
    ({"vision_layers_from": -1}, "vision_layers_from -1 is out of range"),
])
def test_bad_llava_targets_are_refused_naming_the_value_and_what_is_accepted(values, message):
    with pytest.raises(UserFacingError, match=re.escape(message)):
        _config(**values)


def test_llava_targets_from_toml_lists_and_back():
    config = TrainingConfig.from_mapping({"name": "x", "description": "y", "llava_targets": ["language", "vision"]})
    assert config.llava_targets == ("language", "vision")
    assert TrainingConfig.from_mapping(config.to_dict()) == config


def test_targets_that_cannot_train_are_refused_before_training(model_cache_dir):
    from mmchat.training.engine import prepare_model

    tiny, _ = load_base_copy(TINY, model_cache_dir)
    with pytest.raises(UserFacingError, match=r"llava_targets \['projector'\] trains no LoRA layer"):
        prepare_model(tiny, TINY.kind, _config(llava_targets=("projector",)))
    with pytest.raises(UserFacingError, match=r"vision_layers_from 1 is out of range; this base's projector reads the "
                                              r"output of vision-tower layers 0..0: use 0..0"):
        prepare_model(tiny, TINY.kind, _config(llava_targets=("vision",), vision_layers_from=1))
    offline, _ = load_base_copy(PRESETS["offline"], model_cache_dir)
    with pytest.raises(UserFacingError, match=r"llava_targets \['language', 'projector'\] applies to LLaVA presets "
                                              r"only; the offline model's projector .* VisualTargets"):
        prepare_model(offline, "offline", _config(llava_targets=("language", "projector")))
    assert not any("lora_" in name for name, _ in offline.named_parameters())
