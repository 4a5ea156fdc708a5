"""UI and config modules must not import torch (or transformers) at import time: the server
starts at once and loads models in the background."""

from __future__ import annotations

import subprocess
import sys


def test_ui_and_config_import_without_torch():
    code = (
        "import sys, mmchat.ui.app, mmchat.cli, mmchat.config, mmchat.session, mmchat.vision;"
        "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'open_clip') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
