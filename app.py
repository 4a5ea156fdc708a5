"""Entry point: `python app.py [flags]` serves mmchat on 127.0.0.1:7860 (see `--help`)."""

import sys

from mmchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
