"""Visual runs outside the app: the command line's [visual] table and the per-skill scores.

Real parts: the real offline SmolLM2 + EfficientNet-Lite0 features, the shapes generator's
pictures, real peft LoRA and a real projector trained through the engine's loop, the real
adapter store. Nothing is mocked. (The trainer process and the tab: tests/test_runs.py and
tests/test_app_finetune.py.)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from mmchat.adapters.store import AdapterStore  # noqa: E402
from mmchat.training.examples import Example  # noqa: E402

TOML = ('[training]\nname = "{name}"\ndescription = "sees shapes"\nrank = 4\nalpha = 8\nmax_steps = 2\nbatch_size = 4\n'
        'target_modules = ["q_proj", "v_proj"]\n[dataset]\nsource = "builtin:shapes"\nexamples = {examples}\n'
        '[model]\npreset = "{preset}"\n')


@pytest.mark.slow
def test_the_command_line_trains_the_image_pathway_from_a_visual_table(tmp_path, model_cache_dir, capsys):
    from mmchat.train import main

    config = tmp_path / "shapes.toml"
    config.write_text(TOML.format(name="cli-shapes", examples=8, preset="offline")
                      + "[visual]\nlora = false\nprojector = true\nprojector_learning_rate = 1e-2\n", encoding="utf-8")
    store = tmp_path / "store"
    assert main([str(config), "--store", str(store), "--cache-dir", str(model_cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "8 examples, visual: projector" in out and "step 2/2 loss " in out, out
    (stored,), _ = AdapterStore(store).scan()
    assert stored.name == "cli-shapes" and (stored.folder / "projector.safetensors").is_file()
    assert stored.card.metrics["training"]["targets"]["lora"] is False
    assert stored.card.dataset["source"] == "builtin:shapes" and stored.card.dataset["examples"] == 8
    assert len(list((tmp_path / ".mmchat-dataset").glob("*.png"))) == 8  # the pictures beside the config


@pytest.mark.parametrize("preset, visual, expected", [
    ("offline", "", "[dataset] source 'builtin:shapes' trains the image pathway; add a [visual] table"),
    ("offline", "[visual]\nprompt_tokens = 10000\n", "prompt_tokens 10000 is out of range; accepted: a whole number 0..64"),
    ("offline", "[visual]\nlora = false\nprojector = false\n", "a visual run must train something"),
    ("offline", "[visual]\neyes = true\n", "unknown visual target settings ['eyes']"),
    ("tiny", "[visual]\n", "visual training needs the offline model's image pathway; preset 'tiny' (kind tiny) has none"),
])
def test_the_command_line_refuses_a_bad_visual_run_naming_what_is_wrong(tmp_path, capsys, preset, visual, expected):
    from mmchat.train import main

    config = tmp_path / "shapes.toml"
    config.write_text(TOML.format(name="bad", examples=2, preset=preset) + visual, encoding="utf-8")
    assert main([str(config), "--store", str(tmp_path / "store")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "store" / "bad").exists()


def test_scores_are_exact_match_per_skill_with_aliases_and_cider_only_over_enough_captions():
    from mmchat.training.visual_run import score

    examples = [Example("Where is the red circle?", "center", kind="position", expected="center"),
                Example("Where is the blue star?", "left", kind="position", expected="left"),
                Example("How many red circles are there?", "3", kind="count", expected="3")]
    replies = ["Centre.", "right", "three"]
    assert score(examples, replies) == {"exact_match": round(2 / 3, 3), "exact_match_count": 1.0,
                                        "exact_match_position": 0.5}
    captions = [Example("Describe the image.", f"A photo of {n} red circles on a white background.", kind="caption")
                for n in ("two", "three")]
    notes: dict = {}
    side = score(examples + captions, replies + ["A photo of two red circles.", "A photo."], notes)
    assert "cider_d" not in side and "cider_d absent: 2 caption example(s)" in notes["notes"][0]
    many = captions * 3
    side = score(many, [c.answer for c in many])
    assert side["cider_d"] > 1.0 and "exact_match" not in side
