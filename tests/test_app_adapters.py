"""Adapters through the real app: a real gradio server driven by `gradio_client`.

The tiny random LLaVA (its own instance: the app loads adapters onto it) with real peft
adapters in a real store; greedy decoding, so "the right adapter answered" is checked by
comparing with the same question asked of the backend directly with that adapter.
"""

from __future__ import annotations

import threading

import pytest
from gradio_client import Client, handle_file

from mmchat.backends.base import GenerationParams

TOKENS = 8
MAX_COLUMNS = 4
GREEDY = GenerationParams(max_new_tokens=TOKENS, temperature=0.0)
QUESTION = "Name a colour."


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache_dir, make_adapters, launch_app):
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    root = tmp_path_factory.mktemp("app-adapters")
    backend = LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)
    make_adapters(backend, root / "store", {"alpha": 1, "beta": 2})
    url = launch_app(root, backend, None, preset="tiny", generation={"temperature": 0.0},
                     knowledge={"enabled": False}, adapters={"path": str(root / "store")})
    return url, backend, root  # root/store: the shipped adapters; root/adapters: the user's (data dir)


def expected(backend, adapter) -> str:
    from mmchat.language import instruction
    from mmchat.prompt import with_instruction

    # What the session sends: the person's system prompt and the answer-language line.
    system = with_instruction("You are terse.", instruction(QUESTION, backend.info.languages))
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    return "".join(backend.stream(backend.prepare(messages, [], adapter=adapter), GREEDY)).strip()


def chat(client, adapter, text=QUESTION):
    """`/chat` with every setting given: system, tokens, temperature, top-p, knowledge x5, adapter."""
    result = client.predict({"text": text, "files": []}, "You are terse.", TOKENS, 0.0, 0.9,
                            False, 4, [], False, False, adapter, api_name="/chat")
    return result


def answer_and_trace(result):
    chat_value, trace = result[0], result[2]
    return chat_value[-1]["content"], trace


def test_chat_answers_with_the_chosen_adapter_and_says_which(app):
    url, backend, _ = app
    client = Client(url, verbose=False)
    content, trace = answer_and_trace(chat(client, "alpha"))
    text = content[0]["text"] if isinstance(content, list) else str(content)
    assert text.startswith(expected(backend, "alpha")), (text, expected(backend, "alpha"))
    assert "adapter alpha" in text  # the per-answer line under the answer
    assert "| adapter | alpha |" in trace
    # Regenerate keeps the answer's adapter whatever the selector says now.
    regenerated = client.predict("You are terse.", TOKENS, 0.0, 0.9, False, 4, [], False, False,
                                 api_name="/regenerate")
    again = regenerated[0][-1]["content"]
    again = again[0]["text"] if isinstance(again, list) else str(again)
    assert again.startswith(expected(backend, "alpha")) and "adapter alpha" in again


def test_an_unknown_adapter_is_refused_by_name_and_the_app_keeps_serving(app):
    url, *_ = app
    client = Client(url, verbose=False)
    refused = chat(client, "gamma")  # a toast names the loaded adapters (tests/test_adapter_host.py)
    assert refused[0] == [], "nothing is added to the chat"
    assert refused[1]["value"]["text"] == QUESTION, "the message stays in the textbox"
    content, _ = answer_and_trace(chat(client, "base"))
    assert content


def test_two_clients_on_different_adapters_at_once_get_their_own(app):
    url, backend, _ = app
    want = {name: expected(backend, name) for name in ("alpha", "beta", "base")}
    assert len(set(want.values())) == 3, want
    got: dict = {}

    def ask(name):
        client = Client(url, verbose=False)
        content, _ = answer_and_trace(chat(client, name))
        got[name] = content[0]["text"] if isinstance(content, list) else str(content)

    threads = [threading.Thread(target=ask, args=(name,)) for name in want]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    for name, text in want.items():
        assert got[name].startswith(text), (name, got[name], text)


def test_the_adapters_listing_and_cards_are_api_callable(app):
    url, *_ = app
    client = Client(url, verbose=False)
    table, choice, notes = client.predict(api_name="/adapters")
    assert [row[:2] for row in table["data"]] == [["alpha", "shipped"], ["beta", "shipped"]]
    assert table["headers"][:2] == ["name", "store"]
    assert "2 adapter(s)" in notes and "read-only" in notes
    card = client.predict("beta", api_name="/adapter_card")
    assert "### beta" in card and "test adapter beta" in card and "rank** 4" in card


def test_upload_export_merge_and_delete_through_the_adapters_tab(app, tmp_path, make_adapters):
    import json
    import zipfile

    from mmchat.adapters.bundle import export_adapter_zip

    url, backend, root = app
    client = Client(url, verbose=False)
    other = make_adapters(backend, tmp_path / "elsewhere", {"gamma": 3, "alpha": 4})
    taken = export_adapter_zip(other.read(other.root / "alpha"), tmp_path / "alpha.zip")
    good = export_adapter_zip(other.read(other.root / "gamma"), tmp_path / "gamma.zip")
    bad = tmp_path / "pickled.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("x/adapter_config.json", json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
        zf.writestr("x/adapter_model.bin", b"\x80\x04pickle")

    table, _, _, message, _ = client.predict(handle_file(str(bad)), "", api_name="/adapter_upload")
    assert message.startswith("Refused:") and ".bin" in message and "safetensors" in message, message
    assert [row[0] for row in table["data"]] == ["alpha", "beta"], "a refused zip adds nothing"

    # A zip whose card names a shipped adapter is refused; nothing is written anywhere.
    table, _, _, message, _ = client.predict(handle_file(str(taken)), "", api_name="/adapter_upload")
    assert "Refused:" in message and "'alpha' is the name of a shipped adapter; choose another name" in message, message
    assert len(table["data"]) == 2 and not (root / "adapters" / "alpha").exists()

    table, _, _, message, _ = client.predict(handle_file(str(good)), "", api_name="/adapter_upload")
    assert "Added **gamma**" in message, message
    assert [row[:2] for row in table["data"]] == [["alpha", "shipped"], ["beta", "shipped"], ["gamma", "yours"]]
    assert (root / "adapters" / "gamma").is_dir(), "uploads go to the user store"
    assert not (root / "store" / "gamma").exists()
    content, _ = answer_and_trace(chat(client, "gamma"))  # usable at once, by name
    text = content[0]["text"] if isinstance(content, list) else str(content)
    assert text.startswith(expected(backend, "gamma"))

    exported, message = client.predict("gamma", api_name="/adapter_export")
    exported = exported["value"] if isinstance(exported, dict) else exported  # a visibility update
    with zipfile.ZipFile(exported) as zf:
        names = sorted(zf.namelist())
    assert {"gamma/adapter_card.json", "gamma/adapter_config.json", "gamma/adapter_model.safetensors"} <= set(names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]

    message = client.predict("gamma", api_name="/adapter_merge")
    assert "Merged into a standalone model folder" in message and "AutoModelForImageTextToText" in message, message

    table, _, _, message, _ = client.predict("gamma", False, api_name="/adapter_delete")
    assert "Nothing deleted" in message and len(table["data"]) == 3
    table, _, _, message, _ = client.predict("gamma", True, api_name="/adapter_delete")
    assert "Deleted **gamma**" in message and [row[0] for row in table["data"]] == ["alpha", "beta"]
    assert "gamma" not in backend.adapters.names and not (root / "adapters" / "gamma").exists()
    table, _, _, message, _ = client.predict("alpha", True, api_name="/adapter_delete")
    assert "'alpha' is a shipped adapter" in message and "read-only" in message, message
    assert len(table["data"]) == 2 and (root / "store" / "alpha").is_dir() and "alpha" in backend.adapters.names


def test_compare_endpoint_streams_every_column_and_matches_the_engine(app, cat_image, tmp_path):
    from mmchat.compare import compare
    from mmchat.config import GenerationDefaults

    url, backend, _ = app
    client = Client(url, verbose=False)
    photo = tmp_path / "cat.png"
    cat_image.save(photo)
    job = client.submit("Describe it.", handle_file(str(photo)), ["base", "alpha", "beta"], TOKENS, 0.0,
                        api_name="/compare")
    final = job.result(timeout=120)
    figures = final[-1]
    assert [c["adapter"] for c in figures] == ["base", "alpha", "beta"]
    assert all(c["done"] and c["output_tokens"] > 0 and c["time_to_first_token_s"] is not None for c in figures)
    direct = list(compare(backend, "Describe it.", cat_image.convert("RGB"), ["base", "alpha", "beta"],
                          GREEDY, system_prompt=GenerationDefaults().system_prompt))[-1]
    assert [c["text"] for c in figures] == [c.text for c in direct]
    assert len({c["text"] for c in figures}) == 3
    first = job.outputs()[0][-1]  # the columns show before any is done (the engine streams each token)
    assert [c["adapter"] for c in first] == ["base", "alpha", "beta"] and not any(c["done"] for c in first)
    cells = [cell["value"] if isinstance(cell, dict) else cell for cell in final[:3]]
    assert [cell.split("\n")[0] for cell in cells] == ["**base**", "**alpha**", "**beta**"]
    assert all("tok/s" in cell and figures[i]["text"] in cell for i, cell in enumerate(cells))
    diff = final[MAX_COLUMNS]  # the first diff: alpha against base
    diff = diff["value"] if isinstance(diff, dict) and "value" in diff else diff
    assert {item["class_or_confidence"] for item in diff} >= {"+", "-"}, diff


def test_compare_refuses_bad_columns_by_name(app):
    url, *_ = app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="choose 2 to 4 columns"):
        client.predict("Hi", None, ["base"], TOKENS, 0.0, api_name="/compare")
    with pytest.raises(Exception, match="no adapter named 'zeta'"):
        client.predict("Hi", None, ["base", "zeta"], TOKENS, 0.0, api_name="/compare")


def test_compare_stop_ends_every_column(app):
    import time

    url, *_ = app
    client = Client(url, verbose=False)
    job = client.submit("Write a very long story.", None, ["base", "alpha", "beta"], 512, 0.0, api_name="/compare")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:  # the first snapshot: the batch has started
        time.sleep(0.02)
    client.predict(api_name="/compare_stop")
    figures = job.result(timeout=120)[-1]
    assert all(c["done"] for c in figures)
    assert {c["finish_reason"] for c in figures} == {"cancelled"}, figures
    assert all(c["output_tokens"] < 512 for c in figures)
