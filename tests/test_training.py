"""The training engine, its data and the shipped adapters.

Real parts: the tiny random LLaVA (built from configs) and the offline SmolLM2 weights,
real peft LoRA training through transformers' Trainer, real files in an AdapterStore, the
real OfflineBackend answering the shipped photos with each shipped adapter. Nothing is
mocked; "a run that fails mid-way" is an evaluation or progress hook that raises.
"""

from __future__ import annotations

import os

# Other processes share the test machine's two cores: OpenMP's busy-wait made a tiny training
# step ~30x slower there. Must be set before torch loads (running this file alone).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mmchat.adapters.store import AdapterStore  # noqa: E402
from mmchat.config import PRESETS, PROJECT_DIR, GenerationDefaults  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.config import TrainingConfig  # noqa: E402
from mmchat.training.examples import IGNORE, Example, Renderer  # noqa: E402

TINY = PRESETS["tiny"]
SHIPPED_DIR = PROJECT_DIR / "adapters"
TEXT_EXAMPLES = [
    Example("Name a colour.", "Blue."),
    Example("What is two plus two?", "Four."),
    Example("Say hello.", "Hello there."),
    Example("What is the opposite of up?", "Down."),
]


def tiny_config(**values) -> TrainingConfig:
    fields = dict(name="tiny-test", description="a test adapter", rank=4, alpha=8, learning_rate=1e-2,
                  max_steps=6, batch_size=2, seed=7)
    fields.update(values)
    return TrainingConfig(**fields)


def train_tiny(store: AdapterStore, cache_dir: Path, config: TrainingConfig | None = None, **kwargs):
    from mmchat.training.engine import train_adapter

    return train_adapter(config or tiny_config(), TEXT_EXAMPLES, store, preset=TINY, cache_dir=cache_dir, **kwargs)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_labels_mask_exactly_the_prompt_that_chat_sends(model_cache_dir):
    """The training prompt is token for token what OfflineBackend.prepare builds for chat."""
    from mmchat.backends.base import BackendInfo
    from mmchat.backends.builtin import load_smollm2_tokenizer
    from mmchat.backends.offline import OfflineBackend
    from mmchat.prompt import Turn, render_messages
    from mmchat.training.evaluate import LabelledPathway, LabelledPhoto

    tokenizer = load_smollm2_tokenizer(model_cache_dir)
    system = GenerationDefaults().system_prompt
    labels = (("tabby cat", 0.62), ("tiger cat", 0.2), ("lynx", 0.05))
    example = Example("What animal is this?", "cat", labels)
    encoded = Renderer("offline", tokenizer, system).encode(example)

    # The chat side: the session's render_messages, then the offline backend's prepare.
    info = BackendInfo(preset="offline", kind="offline", source="builtin:x", device="cpu", dtype="float32",
                       quantization="none", context_length=2048)
    chat = OfflineBackend(None, tokenizer, LabelledPathway(None), info)
    messages, _ = render_messages(system, [Turn("user", "What animal is this?", ("photo",))])
    prompt = chat.prepare(messages, [LabelledPhoto(labels)]).inputs["input_ids"][0].tolist()

    n = len(prompt)
    assert encoded.input_ids[:n] == prompt
    assert encoded.prompt_length == n
    assert encoded.labels[:n] == [IGNORE] * n  # every prompt position is -100
    assert encoded.labels[n:] == encoded.input_ids[n:]  # every answer position is learned
    assert tokenizer.decode(encoded.input_ids[n:]) == "cat<|im_end|>"  # the answer and the end of the turn
    text = tokenizer.decode(prompt)
    assert "[Image 1: a photo of a cat (tabby cat 62%, tiger cat 20%, lynx 5%)]\nWhat animal is this?" in text
    assert "You cannot see images" in text  # OFFLINE_SYSTEM_HINT, as chat adds it


def test_collated_batches_pad_labels_with_minus_100():
    import torch

    from mmchat.training.collate import answer_positions, collate
    from mmchat.training.examples import Encoded

    batch = collate([Encoded([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8]), Encoded([5, 9], [IGNORE, 9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 9, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert answer_positions(batch["labels"]).tolist() == [0, 1, 2]  # positions predicting a counted token
    assert answer_positions(torch.tensor([[IGNORE, IGNORE, 3]])).tolist() == [1]


def test_loss_goes_down_and_only_a_complete_adapter_is_published(tmp_path, model_cache_dir, tiny_backend):
    from peft import PeftModel

    from mmchat.backends.builtin import build_tiny_llava

    steps = []
    store = AdapterStore(tmp_path / "store")
    stored = train_tiny(store, model_cache_dir, tiny_config(max_steps=12, learning_rate=0.05),
                        progress=lambda step, total, loss: steps.append((step, total, loss)))
    assert [s for s, _, _ in steps] == list(range(1, 13)) and {t for _, t, _ in steps} == {12}
    losses = [loss for _, _, loss in steps]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses  # it learns the four answers (10.9 -> 10.2)
    assert [a.name for a in store.scan()[0]] == ["tiny-test"]
    assert sorted(p.name for p in stored.folder.iterdir()) == [
        "adapter_card.json", "adapter_config.json", "adapter_model.safetensors"]
    card = stored.card
    assert card.base_fingerprint == tiny_backend.base_fingerprint()  # the function the backend uses
    assert (card.rank, card.alpha, card.base_model) == (4, 8.0, "builtin:tiny-llava")
    assert card.target_modules == (r".*language_model.*\.layers\.\d+\..*\.(q_proj|k_proj|v_proj|o_proj)",)
    assert card.dataset["examples"] == 4 and re.fullmatch(r"[0-9a-f]{64}", card.dataset["sha256"])
    assert card.metrics["training"]["steps"] == 12 and card.chat_template
    PeftModel.from_pretrained(build_tiny_llava(model_cache_dir)[0], str(stored.folder))  # plain peft loads it


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path, model_cache_dir):
    first = _weights(train_tiny(AdapterStore(tmp_path / "a"), model_cache_dir).folder)
    again = _weights(train_tiny(AdapterStore(tmp_path / "b"), model_cache_dir).folder)
    other = _weights(train_tiny(AdapterStore(tmp_path / "c"), model_cache_dir, tiny_config(seed=8)).folder)
    assert first.keys() == again.keys() and all(first[k].equal(again[k]) for k in first)
    assert any(not first[k].equal(other[k]) for k in first)


def test_the_stop_event_ends_training_and_nothing_is_registered(tmp_path, model_cache_dir):
    from mmchat.training.engine import TrainingStopped

    stop = threading.Event()
    seen = []

    def progress(step, total, loss):
        seen.append(step)
        if step == 2:
            stop.set()

    store = AdapterStore(tmp_path / "store")
    with pytest.raises(TrainingStopped, match=r"training stopped at step 2 of 6; nothing was saved"):
        train_tiny(store, model_cache_dir, tiny_config(max_steps=6), progress=progress, stop=stop)
    assert seen == [1, 2]
    assert store.scan() == ([], []) and list(store.root.iterdir()) == []


def test_a_run_failing_mid_way_leaves_no_listed_adapter(tmp_path, model_cache_dir):
    store = AdapterStore(tmp_path / "store")

    def failing_evaluation(folder: Path):
        assert (folder / "adapter_model.safetensors").is_file()  # trained and saved, not yet published
        raise RuntimeError("evaluation crashed")

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train_tiny(store, model_cache_dir, evaluate=failing_evaluation)

    def failing_progress(step, total, loss):
        if step == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train_tiny(store, model_cache_dir, progress=failing_progress)
    assert store.scan() == ([], []) and list(store.root.iterdir()) == []
    train_tiny(store, model_cache_dir)  # the name is free: nothing half-made holds it
    with pytest.raises(UserFacingError, match="an adapter named 'tiny-test' already exists"):
        train_tiny(store, model_cache_dir)


@pytest.mark.parametrize("values, message", [
    ({"rank": 0}, "rank 0 is out of range; accepted: an integer 1..64"),
    ({"rank": 65}, "rank 65 is out of range; accepted: an integer 1..64"),
    ({"learning_rate": 1.0}, "learning_rate 1.0 is out of range; accepted: 1e-6..0.1"),
    ({"batch_size": 0}, "batch_size 0 is out of range; accepted: an integer 1..64"),
    ({"epochs": 0}, "epochs 0 is out of range; accepted: an integer 1..100"),
    ({"dropout": 0.9}, "dropout 0.9 is out of range; accepted: 0..0.5"),
    ({"seed": -1}, "seed -1 is out of range; accepted: an integer 0..4294967295"),
    ({"max_length": 8}, "max_length 8 is out of range; accepted: an integer 32..8192"),
    ({"name": "Bad Name"}, "adapter name 'Bad Name' is not valid; accepted: a-z, 0-9"),
    ({"name": "base"}, "adapter name 'base' is not valid"),
    ({"description": "two\nlines"}, "description 'two\\nlines' is not valid; accepted: one non-empty line"),
    ({"target_modules": ()}, "target_modules () is not valid; accepted: a non-empty list of module names"),
])
def test_bad_hyperparameters_name_the_value_and_the_accepted_range(values, message):
    with pytest.raises(UserFacingError, match=re.escape(message)):
        tiny_config(**values)


def test_bad_settings_and_data_are_refused_before_training(tmp_path, model_cache_dir):
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(UserFacingError, match=r"target_modules \['qkv'\] are not modules of this base; accepted: "):
        train_tiny(store, model_cache_dir, tiny_config(target_modules=("qkv",)))
    with pytest.raises(UserFacingError, match="layers_from 5 is out of range; this base has 2 decoder layers"):
        train_tiny(store, model_cache_dir, tiny_config(layers_from=5))
    from mmchat.training.engine import train_adapter

    with pytest.raises(UserFacingError, match="more than max_length 32; raise max_length"):
        train_adapter(tiny_config(max_length=32), [Example("word " * 40, "x")], store, preset=TINY,
                      cache_dir=model_cache_dir)
    with pytest.raises(UserFacingError, match="train the offline stand-in only"):
        train_adapter(tiny_config(), [Example("What is this?", "cat", (("tabby cat", 0.9),))], store, preset=TINY,
                      cache_dir=model_cache_dir)
    with pytest.raises(UserFacingError, match=r"unknown training key\(s\) \['lr'\]; accepted: "):
        TrainingConfig.from_mapping({"name": "x", "description": "y", "lr": 1})
    from mmchat.training.examples import read_jsonl

    with pytest.raises(UserFacingError, match="image_label 'tabby' is not an ImageNet class name; did you mean"):
        read_jsonl(['{"question": "q", "answer": "a", "image_label": "tabby"}'])
    with pytest.raises(UserFacingError, match="dataset row 1: answer is None; accepted: a non-empty string"):
        read_jsonl(['{"question": "q"}'])
    assert store.scan() == ([], [])


def test_the_command_line_trains_from_a_toml_and_reports_bad_values(tmp_path, model_cache_dir, capsys):
    from mmchat.train import main

    rows = [{"question": e.question, "answer": e.answer} for e in TEXT_EXAMPLES]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    config = tmp_path / "train.toml"
    config.write_text(
        '[training]\nname = "cli-test"\ndescription = "from the CLI"\nrank = 2\nmax_steps = 2\nbatch_size = 2\n'
        '[dataset]\nsource = "data.jsonl"\n[model]\npreset = "tiny"\n', encoding="utf-8")
    store = tmp_path / "store"
    assert main([str(config), "--store", str(store), "--cache-dir", str(model_cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "step 1/2 loss " in out and "step 2/2 loss " in out and f"published cli-test in {store / 'cli-test'}" in out
    assert [a.name for a in AdapterStore(store).scan()[0]] == ["cli-test"]
    config.write_text('[training]\nname = "cli-two"\ndescription = "x"\nrank = 99\n[dataset]\nsource = "data.jsonl"\n')
    assert main([str(config), "--store", str(store)]) == 2
    assert "error: rank 99 is out of range; accepted: an integer 1..64" in capsys.readouterr().err
    config.write_text('[training]\nname = "cli-two"\ndescription = "x"\n[dataset]\nsource = "builtin:poems"\n')
    assert main([str(config), "--store", str(store)]) == 2
    assert "built-in dataset 'poems' does not exist; accepted: one-word, caption, json" in capsys.readouterr().err


def test_builtin_data_is_deterministic_and_held_out_questions_are_never_trained_on():
    from mmchat.training.builtin_data import STYLES, generate, questions

    assert generate("json", 50) == generate("json", 50)
    held = questions(200, 1000, held_out=True)
    trained = {e.question for style in STYLES for e in generate(style, 400)}
    assert not {item.question for item in held} & trained
    held_classes = {item.labels[0][0] for item in held if item.labels}
    trained_classes = {e.image_labels[0][0] for style in STYLES for e in generate(style, 400) if e.image_labels}
    assert held_classes and not held_classes & trained_classes
    for item in held[:20]:  # every style's answer passes its own check and carries the expected word
        from mmchat.training.evaluate import CHECKS, answers, json_answer

        assert CHECKS["one-word"](item.answer("one-word")) and answers(item.answer("one-word"), item.word)
        assert CHECKS["caption"](item.answer("caption")), item.answer("caption")
        assert CHECKS["json"](item.answer("json")) and answers(json_answer(item.answer("json")), item.word)


def test_format_checks():
    from mmchat.training.evaluate import caption, json_object, one_word

    assert one_word("cat") and one_word("7.") and not one_word("This is a cat.")
    assert caption("A photo of a cat, probably a tabby cat.") and not caption("A photo of a cat. It sleeps.")
    assert not caption("This is a photo of a cat.")
    assert json_object('{"answer": "cat", "confidence": 0.62}')
    assert not json_object('{"answer": "cat"}') and not json_object('{"answer": "cat", "confidence": 3}')
    assert not json_object("cat")


@pytest.fixture(scope="module")
def shipped_backend(model_cache_dir):
    """Its own OfflineBackend (loading adapters wraps its model): never the shared fixture."""
    from mmchat.backends.offline import OfflineBackend

    return OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)


def test_the_engine_fingerprints_the_offline_base_as_the_backend_does(model_cache_dir, shipped_backend):
    from mmchat.adapters.host import AdapterHost
    from mmchat.backends.registry import load_base_copy

    model, tokenizer = load_base_copy(PRESETS["offline"], model_cache_dir)
    assert AdapterHost(model).fingerprint(tokenizer.get_vocab()) == shipped_backend.base_fingerprint()


def test_shipped_adapters_load_score_and_answer_the_shipped_photos_in_their_format(shipped_backend):
    from PIL import Image

    from mmchat.training.evaluate import CHECKS, ANSWER_OF, Evaluator, answers

    usable, refused = AdapterStore(SHIPPED_DIR).compatible(shipped_backend.base_fingerprint())
    shipped = {a.name: a for a in usable}
    assert {"one-word", "caption", "json"} <= set(shipped) and not refused
    evaluator = Evaluator(shipped_backend, GenerationDefaults().system_prompt, max_new_tokens=32)
    photos = {name: Image.open(PROJECT_DIR / "knowledge" / "images" / name).convert("RGB")
              for name in ("cat.png", "coffee.png")}
    for style in ("one-word", "caption", "json"):
        adapter = shipped[style]
        card = adapter.card
        assert card.rank <= 16 and (adapter.folder / "adapter_model.safetensors").stat().st_size < 10 * 2**20
        base, adapted = card.metrics["base"], card.metrics["adapter"]
        assert adapted["format"] >= 0.9 and base["format"] <= adapted["format"] - 0.4, (style, base, adapted)
        assert adapted["answers"] >= base["answers"] - 0.1, (style, base, adapted)  # it still answers
        assert len(card.examples) == 3 and all({"prompt", "base", "adapter"} <= set(e) for e in card.examples)
        if style not in shipped_backend.adapters.names:
            shipped_backend.adapters.load(style, adapter.folder)
        extract = ANSWER_OF.get(style, lambda text: text)
        for name, question, word in (("cat.png", "What animal is this?", "cat"),
                                     ("coffee.png", "What is in the cup?", "espresso")):
            reply = evaluator.ask(question, [photos[name]], adapter=style)
            assert CHECKS[style](reply) and answers(extract(reply), word), (style, name, reply)


def test_the_shipped_shapes_adapter_counts_the_red_circles_in_the_shipped_photo(shipped_backend):
    """Issue 13's shipped example: adapters/shapes (projector + LoRA on the image pathway, built by
    `make adapters`) answers questions about the shipped shapes photo that the base (the label
    pathway) cannot, and its card carries the held-out scores per skill."""
    import numpy as np
    from PIL import Image

    from mmchat.training.evaluate import Evaluator
    from mmchat.training.shipped import SHAPES_PHOTO, VISUAL, shapes_photo

    usable, _ = AdapterStore(SHIPPED_DIR).compatible(shipped_backend.base_fingerprint())
    adapter = {a.name: a for a in usable}[VISUAL]
    assert (adapter.folder / "projector.safetensors").exists()
    metrics = adapter.card.metrics
    assert metrics["base"]["exact_match"] <= 0.1 and metrics["adapter"]["exact_match"] >= 0.8, metrics
    assert all(metrics["adapter"][f"exact_match_{skill}"] >= 0.5 for skill in ("colour", "shape", "count", "position"))
    name, question, expected = SHAPES_PHOTO
    photo = Image.open(PROJECT_DIR / "knowledge" / "images" / name).convert("RGB")
    assert np.array_equal(np.asarray(photo), np.asarray(shapes_photo()))  # the file is what the builder draws
    if VISUAL not in shipped_backend.adapters.names:
        shipped_backend.adapters.load(VISUAL, adapter.folder)
    evaluator = Evaluator(shipped_backend, GenerationDefaults().system_prompt, max_new_tokens=12)
    assert evaluator.ask(question, [photo], adapter=VISUAL).strip(" .").lower() in (expected, "three")
    assert evaluator.ask("What colour are the circles?", [photo], adapter=VISUAL).strip(" .").lower() == "red"
    assert evaluator.ask(question, [photo]).strip(" .").lower() not in (expected, "three")  # the base cannot count


def test_adapter_names_that_torch_modules_already_use_are_refused_up_front():
    """peft keys each adapter's layers by its name in torch ModuleDicts: "items" failed to load
    after a whole training run ("attribute 'items' already exists")."""
    import torch

    from mmchat.adapters.card import NAME, TORCH_ATTRIBUTES, name_problem

    taken = {n for n in set(dir(torch.nn.ModuleDict())) | set(dir(torch.nn.ParameterDict())) if NAME.fullmatch(n)}
    assert taken <= TORCH_ATTRIBUTES  # every name torch modules have here (smart_apply once a model loads)
    assert all(name_problem(n) for n in taken)
    with pytest.raises(UserFacingError, match="adapter name 'items' is reserved"):
        TrainingConfig(name="items", description="x")
    TrainingConfig(name="my-items", description="x")
