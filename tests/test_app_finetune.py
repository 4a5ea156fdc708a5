"""The Fine-tune tab through the real app: a real gradio server driven by `gradio_client`.

The tiny random LLaVA serves chat; training runs in a real `python -m mmchat.train --run`
subprocess on a copy of the same base, publishes into the user store under the data dir, and
the new adapter answers in chat through `/chat` without a restart. A second app serves the
real offline model: the built-in shapes pictures train its image pathway (a visual run) and
publish a visual adapter. Nothing is mocked.
"""

from __future__ import annotations

import json
import time

import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.slow

ROWS = [{"question": f"What is item {i}?", "answer": f"Item {i} is a thing."} for i in range(24)]


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache_dir, launch_app):
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    root = tmp_path_factory.mktemp("app-finetune")
    backend = LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)
    (root / "shipped").mkdir()
    url = launch_app(root, backend, None, preset="tiny", generation={"temperature": 0.0},
                     knowledge={"enabled": False}, adapters={"path": str(root / "shipped")})
    return url, backend, root


def dataset(root, bad: bool = True):
    lines = [json.dumps(row) for row in ROWS]
    if bad:
        lines[3] = '{"question": "no answer here"}'
        lines.insert(7, "this line is not JSON")
    path = root / ("broken.jsonl" if bad else "good.jsonl")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def table(value) -> list[list]:
    """A Dataframe's rows, whether it came back as a value or as an update (visibility changed)."""
    value = value.get("value", value) if isinstance(value, dict) and "__type__" in value else value
    return value["data"]


def validate(client, path, max_length=128):
    return client.predict("", handle_file(str(path)), True, max_length, 0.1, "", 0, api_name="/finetune_validate")


def start(client, path, name, accept_bad=False, steps=4, **advanced):
    fields = dict(rank=4, alpha=8, dropout=None, targets=None, learning_rate=0.01, max_steps=steps, epochs=None,
                  batch_size=2, grad_accum=None, warmup=None, eval_every=2, sample_every=2, checkpoint_every=2)
    fields.update(advanced)
    return client.predict("quick", name, "learns the item answers", accept_bad, "", handle_file(str(path)), True, 128,
                          0.1, "", 0, *fields.values(), api_name="/finetune_start")


def start_visual(client, name, dataset="shapes", preset="quick visual", steps=4, targets="projector + LoRA",
                 projector_lr=3e-3, prompt_tokens=16, prompt_lr=3e-3, projector_first=3):
    """Train with a visual preset: the advanced fields blank (the preset's) but steps and batch,
    8 held-out pictures (a held-out fraction of 0.007 of the 1200)."""
    advanced = [None] * 5 + [steps, None, 4] + [None] * 4 + [2]
    return client.predict(preset, name, "sees shapes", False, dataset, None, True, 256, 0.007, "", 0, *advanced,
                          targets, projector_lr, prompt_tokens, prompt_lr, projector_first,
                          api_name="/finetune_start")[0]


def wait(client, run_id, states=("done", "failed", "stopped"), timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(run_id, api_name="/finetune_status")
        if status["state"] in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never reached {states}: {status}")


def test_validation_names_every_bad_row_and_shows_the_rows_as_the_model_reads_them(app):
    url, _, root = app
    client = Client(url, verbose=False)
    summary, bad, accept, preview, _ = validate(client, dataset(root))
    assert "23 usable rows, 2 bad rows" in summary.replace("**", ""), summary
    rows = {row[0]: row[1] for row in table(bad)}
    assert rows["line 4"].startswith("answer is missing") or "answer" in rows["line 4"], rows
    assert rows["line 8"].startswith("not JSON"), rows
    assert "<mark class=\"mmchat-supervised\">Item 0 is a thing." in preview
    assert "What is item 0?" in preview
    result = client.predict("one-word", 2, 256, api_name="/finetune_preview")
    assert len(result["rows"]) == 2 and "mmchat-supervised" in result["rows"][0]


def test_bad_rows_block_the_run_until_accepted_and_bad_settings_name_the_field(app):
    url, _, root = app
    client = Client(url, verbose=False)
    note = start(client, dataset(root), "blocked")[0]
    assert "2 row(s) of broken.jsonl are not usable" in note and "usable rows" in note, note
    note = start(client, dataset(root, bad=False), "bad-lr", learning_rate=5.0)[0]
    assert "learning_rate 5.0 is out of range; accepted: 1e-6..0.1" in note, note
    note = start(client, dataset(root, bad=False), "bad-steps", steps=10**6)[0]
    assert "max_steps" in note and "accepted" in note, note
    note = start(client, dataset(root, bad=False), "base")[0]
    assert "adapter name 'base' is not valid" in note, note


def test_a_run_trains_in_its_own_process_publishes_and_chat_uses_the_adapter_at_once(app):
    url, backend, root = app
    client = Client(url, verbose=False)
    note, _ = start(client, dataset(root), "item-style", accept_bad=True, steps=6)
    assert "Started run" in note, note
    run_id = client.predict(api_name="/finetune_runs")[0]["id"]
    second = start(client, dataset(root, bad=False), "second")[0]
    assert "a training run is already going" in second or "Started run" not in second, second
    # chat keeps answering while it trains
    reply = client.predict({"text": "Hello?", "files": []}, "You are terse.", 4, 0.0, 0.9, False, 4, [], False, False,
                           "base", api_name="/chat")
    assert reply[0][-1]["role"] == "assistant"
    status = wait(client, run_id)
    assert status["state"] == "done", status
    assert [s for s, _ in status["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in status["eval_loss"]] == [2, 4, 6] and status["samples"]
    assert status["metrics"]["adapter"] and status["metrics"]["base"] and status["gallery"]
    assert (root / "adapters" / "item-style" / "adapter_card.json").is_file()  # the user store, not the source tree
    assert not (root / "shipped" / "item-style").exists()
    names = [row[0] for row in table(client.predict(api_name="/adapters")[0])]
    assert "item-style" in names, names

    def answer(adapter):
        client.predict(api_name="/clear")
        reply = client.predict({"text": "What is item 1?", "files": []}, "You are terse.", 8, 0.0, 0.9, False, 4, [],
                               False, False, adapter, api_name="/chat")
        content = reply[0][-1]["content"]
        return content[0]["text"] if isinstance(content, list) else str(content)

    tuned, plain = answer("item-style"), answer("base")
    assert "item-style" in tuned and tuned.split("adapter")[0] != plain.split("adapter")[0], (tuned, plain)


def test_visual_presets_are_refused_on_a_base_other_than_offline_and_bad_targets_name_their_field(app):
    url, _, root = app
    client = Client(url, verbose=False)
    summary = client.predict("shapes", None, True, 256, 0.007, "", 0, api_name="/finetune_validate")[0]
    assert "the built-in shapes dataset trains the offline model's image pathway; the loaded model is 'tiny'" \
        in summary and "--preset offline" in summary, summary
    note = start_visual(client, "eyes")
    assert "trains the offline model's image pathway; the loaded model is 'tiny'" in note, note
    note = start_visual(client, "eyes", dataset="one-word")
    assert "a visual preset trains the offline model's image pathway" in note, note
    for field, expected in (({"targets": "prompt tuning + LoRA", "prompt_tokens": 0},
                             "prompt tokens 0 is out of range; accepted: a whole number 1..64"),
                            ({"targets": "prompt tuning + LoRA", "prompt_tokens": 10_000},
                             "prompt tokens 10000 is out of range; accepted: a whole number 1..64"),
                            ({"projector_lr": 5.0}, "projector_learning_rate 5.0 is out of range; accepted: 1e-6..0.1"),
                            ({"targets": "two-stage (projector, then projector + LoRA)", "projector_first": 0},
                             "projector-first steps 0 are not valid for two-stage training; accepted: a whole "
                             "number of steps >= 1")):
        note = start_visual(client, "eyes", **field)
        assert expected in note, (field, note)
    assert client.predict(api_name="/finetune_runs") == [] or all(r["name"] != "eyes" for r in
                                                                  client.predict(api_name="/finetune_runs"))


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory, offline_backend, launch_app):
    root = tmp_path_factory.mktemp("app-finetune-offline")
    (root / "shipped").mkdir()
    url = launch_app(root, offline_backend, None, preset="offline", generation={"temperature": 0.0},
                     knowledge={"enabled": False}, adapters={"path": str(root / "shipped")})
    return url, root


def test_the_shapes_pictures_train_the_offline_image_pathway_and_publish_a_visual_adapter(offline_app):
    url, root = offline_app
    client = Client(url, verbose=False)
    summary, _, _, preview, photos = client.predict("shapes", None, True, 256, 0.007, "", 0,
                                                    api_name="/finetune_validate")
    assert "builtin:shapes" in summary and "1200 usable rows, 0 bad rows" in summary.replace("**", ""), summary
    assert "split: 1200 train, 8 eval" in summary, summary
    assert "[Image 1: " + "&lt;filename&gt;" * 11 + "]" in preview  # 3 x 3 cells, pooled, colour: what the vectors replace
    shown = photos.get("value", photos) if isinstance(photos, dict) else photos
    assert len(shown) == 3, photos
    note = start_visual(client, "first-shapes", preset="quick")
    assert "builtin:shapes trains the image pathway: choose a visual preset" in note, note

    note = start_visual(client, "first-shapes")
    assert "Started run" in note, note
    run_id = client.predict(api_name="/finetune_runs")[0]["id"]
    status = wait(client, run_id)
    assert status["state"] == "done", status
    assert [s for s, _ in status["loss"]] == [1, 2, 3, 4] and status["dataset"]["rows"] == 16  # each picture once
    assert status["visual"] == {"lora": True, "projector": True, "prompt_tokens": 0, "projector_learning_rate": 3e-3,
                                "prompt_learning_rate": 3e-3, "projector_first": 0}
    for side in ("base", "adapter"):
        assert {"exact_match", "exact_match_colour", "exact_match_shape", "exact_match_count",
                "exact_match_position"} == set(status["metrics"][side]), status["metrics"]
    assert len(status["gallery"]) == 8 and all(row["image"] for row in status["gallery"])
    card = json.loads((root / "adapters" / "first-shapes" / "adapter_card.json").read_text())
    assert card["projector"]["file"] == "projector.safetensors"
    assert card["projector"]["tokens_per_image"] == 11  # a 3 x 3 grid, pooled, colour
    assert (root / "adapters" / "first-shapes" / "projector.safetensors").is_file()
    assert card["metrics"]["adapter"] == status["metrics"]["adapter"]
    assert card["metrics"]["training"]["targets_label"] == "projector + LoRA"
    names = [row[0] for row in table(client.predict(api_name="/adapters")[0])]
    assert "first-shapes" in names, names
