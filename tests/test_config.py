"""Config: presets, TOML loading, env and CLI precedence, and clear errors for bad values."""

from __future__ import annotations

import pytest

from mmchat.cli import config_from_args, parse_args
from mmchat.config import PRESETS, AppConfig, ModelPreset, load_config, split_source
from mmchat.errors import ConfigError


def test_defaults_bind_loopback_7860():
    config = load_config(env={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 7860)
    assert config.model.preset == "auto"


def test_required_presets_exist_with_expected_settings():
    nf4 = PRESETS["llava-1.5-7b-nf4"]
    assert nf4.quantization == "nf4" and nf4.requires_cuda and nf4.dtype == "bfloat16"
    assert nf4.source == "hf-hub:llava-hf/llava-1.5-7b-hf"
    assert PRESETS["llava-interleave-0.5b"].source == "hf-hub:llava-hf/llava-interleave-qwen-0.5b-hf"
    assert PRESETS["offline"].kind == "offline" and PRESETS["tiny"].kind == "tiny"


def test_toml_then_env_then_flags(tmp_path):
    path = tmp_path / "mmchat.toml"
    path.write_text('[server]\nport = 8000\nhost = "0.0.0.0"\n[model]\npreset = "tiny"\n')
    assert load_config(path, env={}).server.port == 8000
    env = {"GRADIO_SERVER_PORT": "9000", "GRADIO_SERVER_NAME": "127.0.0.2"}
    config = load_config(path, env=env)
    assert (config.server.host, config.server.port) == ("127.0.0.2", 9000)
    assert config.model.preset == "tiny"
    config = load_config(path, overrides={"server": {"port": 9100, "host": None}}, env=env)
    assert (config.server.host, config.server.port) == ("127.0.0.2", 9100)


def test_cli_flags_override(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9000")
    config = config_from_args(parse_args(["--port", "7000", "--preset", "offline", "--encoder", "standin"]))
    assert config.server.port == 7000 and config.model.preset == "offline" and config.encoder.kind == "standin"


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ('[model]\npreset = "gpt-9"\n', "llava-1.5-7b-nf4"),
        ('[server]\nport = 70000\n', "1..65535"),
        ('[server]\nprot = 1\n', "valid keys"),
        ('[model]\nsource = "s3://bucket"\n', "hf-hub:"),
        ('[server]\nport = "abc"\n', "not a number"),
        ('nonsense = [\n', "not valid TOML"),
        ('[wat]\nx = 1\n', "sections"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, toml, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_preset_checks_its_fields():
    with pytest.raises(ConfigError, match="quantization 'int3'"):
        ModelPreset(name="x", kind="llava", source="hf-hub:a/b", quantization="int3")
    assert split_source("local-dir:/models/llava") == ("local-dir", "/models/llava")
    with pytest.raises(ConfigError, match="names nothing"):
        split_source("hf-hub:")


def test_config_is_frozen():
    config = AppConfig()
    with pytest.raises(Exception):
        config.server.port = 1  # type: ignore[misc]
