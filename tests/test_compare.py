"""The Compare engine: every column equals the same prompt asked alone on that adapter.

Real parts: the tiny random LLaVA and the offline SmolLM2-135M (each its own instance:
loading adapters changes the model), real peft LoRA adapters with non-zero random weights
saved as safetensors, real photos. Greedy in fp32, so "equal" means the same tokens. The
only stand-in is a backend object that takes no adapters (its `info` is all the refusal
reads).
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from mmchat.backends.base import GenerationParams
from mmchat.compare import Column, compare
from mmchat.errors import PromptTooLong, UserFacingError

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)
QUESTION = "Explain why the sky is blue."
TARGETS = {"tiny": r".*language_model.*\.(q_proj|v_proj)", "offline": ["q_proj", "v_proj"]}


def _load(kind: str, cache_dir):
    from mmchat.config import PRESETS

    if kind == "tiny":
        from mmchat.backends.llava import LlavaBackend

        return LlavaBackend.from_preset(PRESETS["tiny"], cache_dir)
    from mmchat.backends.offline import OfflineBackend

    return OfflineBackend.from_preset(PRESETS["offline"], cache_dir)


def _with_adapters(kind: str, cache_dir, root):
    """A fresh backend with adapters "a" and "b" (init_lora_weights=False: B is not zero)."""
    from peft import LoraConfig, get_peft_model

    backend = _load(kind, cache_dir)
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        alpha = 64 if kind == "tiny" else 16  # the random tiny model needs a strong push to change its answer
        config = LoraConfig(r=4 if kind == "tiny" else 8, lora_alpha=alpha, target_modules=TARGETS[kind],
                            init_lora_weights=False)
        get_peft_model(_load(kind, cache_dir).model, config).save_pretrained(str(root / kind / name))
        backend.adapters.load(name, root / kind / name)
    return backend


@pytest.fixture(scope="module")
def backends(tmp_path_factory, model_cache_dir):
    root = tmp_path_factory.mktemp("compare-adapters")
    return {kind: _with_adapters(kind, model_cache_dir, root) for kind in ("tiny", "offline")}


def _alone(backend, adapter, image=None, params=GREEDY):
    """The same question asked through the backend's own prepare/stream, on one adapter."""
    from mmchat.language import instruction

    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": content}]
    system = instruction(QUESTION, backend.info.languages)  # what chat and Compare add for the model
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    stream = backend.stream(backend.prepare(messages, [image] if image is not None else [], adapter=adapter), params)
    return "".join(stream), stream.stats


def _check_against_alone(backend, snapshots, image=None):
    first, final = snapshots[0], snapshots[-1]
    assert all(c.text == "" and not c.done and c.stats.output_tokens == 0 for c in first)
    assert all(isinstance(c, Column) and c.done for c in final)
    for column in final:
        text, stats = _alone(backend, column.adapter, image)
        assert (column.text, column.stats.output_tokens, column.stats.finish_reason) == (
            text, stats.output_tokens, stats.finish_reason), column.adapter
        assert column.stats.prompt_tokens == stats.prompt_tokens
        assert column.stats.time_to_first_token_s is not None and column.stats.total_s > 0
    # Text only grows, and a column that is done stops changing.
    for before, after in zip(snapshots, snapshots[1:]):
        for b, a in zip(before, after):
            assert a.text.startswith(b.text) and a.stats.output_tokens >= b.stats.output_tokens
            if b.done:
                assert (a.text, a.stats.output_tokens, a.done) == (b.text, b.stats.output_tokens, True)


@pytest.mark.parametrize("kind", ["tiny", "offline"])
def test_columns_equal_each_adapter_asked_alone(backends, kind):
    backend = backends[kind]
    snapshots = list(compare(backend, QUESTION, None, ["b", "base", "a"], GREEDY))
    assert [c.adapter for c in snapshots[-1]] == ["b", "base", "a"]
    assert len({c.text for c in snapshots[-1]}) == 3, [c.text for c in snapshots[-1]]  # the adapters do differ
    assert len(snapshots) > 3  # it streamed
    _check_against_alone(backend, snapshots)  # asked after the comparison: the model is the bare base again


def test_repetition_control_applies_to_each_column_as_alone(backends):
    backend = backends["offline"]
    params = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.3, no_repeat_ngram_size=3)
    final = list(compare(backend, QUESTION, None, ["base", "b"], params))[-1]
    for column in final:
        assert column.text == _alone(backend, column.adapter, params=params)[0]
    assert final[0].text != list(compare(backend, QUESTION, None, ["base", "b"], GREEDY))[-1][0].text  # it bites


def test_a_column_that_ends_early_stops_growing_while_others_go_on(backends):
    backend = backends["offline"]
    params = dataclasses.replace(GREEDY, max_new_tokens=32)
    snapshots = list(compare(backend, QUESTION, None, ["base", "a"], params))
    final = {c.adapter: c for c in snapshots[-1]}
    # On these weights adapter "a" ends its answer before 32 tokens while the base goes on.
    assert final["a"].stats.finish_reason == "stop" and final["base"].stats.finish_reason == "length"
    done_at = next(i for i, shot in enumerate(snapshots) if shot[1].done)
    assert not snapshots[done_at][0].done and snapshots[-1][0].stats.output_tokens > snapshots[done_at][0].stats.output_tokens
    assert final["a"].stats.total_s < final["base"].stats.total_s
    text, stats = _alone(backend, "a", params=params)
    assert (final["a"].text, final["a"].stats.output_tokens) == (text, stats.output_tokens)


@pytest.mark.parametrize("kind", ["tiny", "offline"])
def test_an_image_prompt_works(backends, kind, cat_image):
    backend = backends[kind]
    snapshots = list(compare(backend, QUESTION, cat_image, ["base", "a"], GREEDY))
    _check_against_alone(backend, snapshots, image=cat_image)
    alone_without_image = _alone(backend, "base")[1]
    assert snapshots[-1][0].stats.prompt_tokens > alone_without_image.prompt_tokens  # the image reached the prompt


def test_columns_are_checked_before_anything_runs(backends):
    backend = backends["tiny"]
    cases = {
        ("base",): r"choose 2 to 4 columns to compare \(got 1\); choices: base, a, b",
        ("base", "a", "b", "a", "b"): r"choose 2 to 4 columns to compare \(got 5\)",
        ("base", "a", ""): r"column 'base' is chosen twice; choose distinct columns among: base, a, b",
        ("a", "nope"): r"no adapter named 'nope' is loaded; choose one of: base, a, b",
    }
    for columns, message in cases.items():
        with pytest.raises(UserFacingError, match=message):
            next(compare(backend, QUESTION, None, list(columns), GREEDY))
    with pytest.raises(UserFacingError, match="type a prompt"):
        next(compare(backend, "  ", None, ["base", "a"], GREEDY))
    with pytest.raises(PromptTooLong, match="tokens but only"):
        next(compare(backend, "word " * (backend.info.context_length + 10), None, ["base", "a"], GREEDY))


def test_a_backend_without_adapters_is_refused(backends):
    class NoAdapters:  # stand-in: the refusal reads only `info`
        info = dataclasses.replace(backends["tiny"].info, supports_adapters=False, preset="somevlm")

    with pytest.raises(UserFacingError, match=r"the somevlm model takes no LoRA adapters.*nothing to compare"):
        next(compare(NoAdapters(), QUESTION, None, ["base", "a"], GREEDY))


def _abandon_after_a_token(backend, columns, image=None):
    """Start a long comparison, abandon its iterator once the first column has a token: the
    generation stops and the model is free again."""
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    running = compare(backend, "Write a long story about a dragon.", image, columns, params)
    for shot in running:
        if shot[0].stats.output_tokens:
            break
    running.close()
    assert not backend.adapters._lock.locked()


def test_stop_ends_every_column_and_frees_the_model(backends):
    backend = backends["offline"]
    answer_before = _alone(backend, "a")[0]
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    stop = threading.Event()
    shots = []
    for shot in compare(backend, "Write a long story about a dragon.", None, ["base", "a", "b"], params, stop=stop):
        shots.append(shot)
        if any(c.stats.output_tokens >= 2 for c in shot):
            stop.set()
    final = shots[-1]
    assert all(c.done for c in final)
    assert {c.stats.finish_reason for c in final if c.stats.output_tokens < 200} <= {"cancelled", "stop"}
    assert "cancelled" in {c.stats.finish_reason for c in final}
    assert max(c.stats.output_tokens for c in final) < 50  # far short of 200, even on a busy machine
    assert not backend.adapters._lock.locked()
    _abandon_after_a_token(backend, ["base", "a"])  # abandoning the iterator releases the model too
    assert _alone(backend, "a")[0] == answer_before  # the model still answers, with the adapter asked for


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory):
    """A picture from the built-in shapes dataset (coloured shapes on a light background)."""
    from PIL import Image

    from mmchat.training import shapes

    example = shapes.generate(1, seed=4, out_dir=tmp_path_factory.mktemp("shapes"))[0]
    with Image.open(example.images[0]) as picture:
        return picture.convert("RGB")


@pytest.fixture(scope="module")
def eyes(backends, tmp_path_factory, model_cache_dir):
    """The offline backend with a visual adapter "eyes" (LoRA + a random projector, made loud
    enough to change answers) loaded beside "a" and "b"; test_visual_serving's publisher."""
    from test_visual_serving import TOKEN_DIM, _publish

    from mmchat.adapters.store import AdapterStore
    from mmchat.vision.projector import Projector

    backend = backends["offline"]
    torch.manual_seed(3)
    projector = Projector(TOKEN_DIM, 576)
    with torch.no_grad():
        projector.linear_2.weight.mul_(8)
    store = AdapterStore(tmp_path_factory.mktemp("visual-adapters"))
    backend.adapters.load("eyes", _publish(backend, store, "eyes", 2, model_cache_dir, projector))
    return backend


@pytest.mark.slow
def test_a_visual_adapter_column_answers_as_chat_does_beside_batched_columns(eyes, shapes_image):
    snapshots = list(compare(eyes, QUESTION, shapes_image, ["base", "eyes", "a"], GREEDY))
    final = {c.adapter: c for c in snapshots[-1]}
    assert list(final) == ["base", "eyes", "a"]
    _check_against_alone(eyes, snapshots, image=shapes_image)  # each column, "eyes" too, equals chat alone
    assert final["eyes"].text != final["base"].text, final  # the image vectors reach the answer
    assert final["eyes"].stats.prompt_tokens != final["base"].stats.prompt_tokens  # its own prompt: vectors, not labels
    # The visual column waits for the batch, then streams on its own.
    eyes_started = next(i for i, shot in enumerate(snapshots) if shot[1].stats.output_tokens)
    assert snapshots[eyes_started][0].done and snapshots[eyes_started][2].done
    assert not snapshots[eyes_started][1].done


@pytest.mark.slow
def test_stop_and_abandon_end_a_visual_column_and_free_the_model(eyes, shapes_image):
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    stop = threading.Event()
    stop.set()  # pressed before anything ran: every column, the visual one too, is cancelled
    final = list(compare(eyes, QUESTION, shapes_image, ["base", "eyes"], params, stop=stop))[-1]
    assert [(c.done, c.stats.finish_reason, c.stats.output_tokens) for c in final] == [(True, "cancelled", 0)] * 2
    _abandon_after_a_token(eyes, ["eyes", "base"], shapes_image)
    assert _alone(eyes, "eyes", shapes_image)[0] == list(compare(eyes, QUESTION, shapes_image, ["eyes", "base"],
                                                                 GREEDY))[-1][0].text
