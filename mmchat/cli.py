"""Command line: `mmchat` / `python app.py` — parse flags into an AppConfig and serve the app.

Flags override the TOML file and the environment (see `mmchat.config.load_config`). Nothing
here loads models; `mmchat.ui.app.build_app` starts that in the background.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from mmchat.config import ENCODER_KINDS, PRESETS, AppConfig, load_config
from mmchat.errors import ConfigError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmchat", description="Multimodal chat and RAG demo app.")
    parser.add_argument("--config", help="TOML config file (also MMCHAT_CONFIG)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; also GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860; also GRADIO_SERVER_PORT)")
    parser.add_argument("--preset", choices=["auto", *PRESETS], help="model preset (default auto)")
    parser.add_argument("--model-source", help="override the preset's weights: hf-hub:ID or local-dir:PATH")
    parser.add_argument("--quantization", choices=["none", "nf4"], help="override the preset's quantization")
    parser.add_argument("--encoder", choices=ENCODER_KINDS, help="image encoder (default auto)")
    parser.add_argument("--data-dir", help="the app's writable directory (uploads, exports)")
    parser.add_argument("--concurrency", type=int, help="generations at once (default 1)")
    parser.add_argument("--share", action="store_true", default=None, help="create a public gradio link")
    parser.add_argument(
        "--allowed-hosts",
        help="comma-separated extra Host names to answer (e.g. 'myhost.lan,*.example.org'); requests for "
             "any other name get 400 (also MMCHAT_ALLOWED_HOSTS; 127.0.0.1, localhost and --host always work)",
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> AppConfig:
    return load_config(
        args.config,
        overrides={
            "server": {"host": args.host, "port": args.port, "concurrency_limit": args.concurrency, "share": args.share,
                       "allowed_hosts": args.allowed_hosts},
            "model": {"preset": args.preset, "source": args.model_source, "quantization": args.quantization},
            "encoder": {"kind": args.encoder},
            "": {"data_dir": args.data_dir},
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(parse_args(argv))
    except ConfigError as err:
        print(f"mmchat: {err}", file=sys.stderr)
        return 2
    from mmchat.runtime import Runtime
    from mmchat.ui.app import build_app, launch_kwargs

    runtime = Runtime(config)
    demo = build_app(config, runtime)
    demo.launch(**launch_kwargs(config, runtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
