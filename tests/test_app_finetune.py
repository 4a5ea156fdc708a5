"""The Fine-tune tab through the real app: a real gradio server driven by `gradio_client`.

The tiny random LLaVA serves chat; training runs in a real `python -m mmchat.train --run`
subprocess on a copy of the same base, publishes into the user store under the data dir, and
the new adapter answers in chat through `/chat` without a restart. Nothing is mocked.
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
