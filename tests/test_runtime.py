"""Runtime: background loading through the real registry, status reporting, load failures."""

from __future__ import annotations

import pytest

from mmchat.config import load_config
from mmchat.errors import ModelUnavailable, UserFacingError
from mmchat.runtime import Runtime
from mmchat.ui.style import status_details


def make_config(tmp_path, model_cache_dir, preset, encoder="standin"):
    return load_config(env={}, overrides={
        "model": {"preset": preset, "cache_dir": str(model_cache_dir)},
        "encoder": {"kind": encoder},
        "knowledge": {"path": str(tmp_path / "knowledge"), "seed_demo": False},
        "": {"data_dir": str(tmp_path)},
    })


def test_background_load_reports_progress_then_details(tmp_path, model_cache_dir):
    runtime = Runtime(make_config(tmp_path, model_cache_dir, "tiny"))
    assert "not started" in status_details(runtime)  # nothing loads before start()
    runtime.start()
    runtime.wait_ready(timeout=120)
    status = status_details(runtime)
    for fragment in ("`tiny`", "device `cpu`", "dtype `float32`", "quantization `none`", "MiB", "stand-in"):
        assert fragment in status, (fragment, status)
    session = runtime.new_session()
    assert session.backend is runtime.backend and session.store_dir == tmp_path / "uploads"
    assert runtime.new_session() is not session  # one session per browser


def test_failed_load_is_reported_and_raised_as_user_facing(tmp_path, model_cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    runtime = Runtime(make_config(tmp_path, model_cache_dir, "llava-interleave-0.5b")).start()
    with pytest.raises(ModelUnavailable, match="llava-interleave-0.5b"):
        runtime.wait_ready(timeout=120)
    assert "failed to load" in status_details(runtime)
    with pytest.raises(UserFacingError):
        runtime.new_session()


def test_data_dirs_are_created_inside_the_configured_directory(tmp_path, model_cache_dir):
    runtime = Runtime(make_config(tmp_path / "data", model_cache_dir, "tiny"))
    assert runtime.upload_dir.is_dir() and runtime.export_dir.is_dir()
    assert runtime.upload_dir.parent == (tmp_path / "data").resolve()
