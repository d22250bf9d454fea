"""Run the interactive service: ``python -m ainode_worker.interactive [--port N] [--models F]``.

Settings come from the node's usual sources (``configs/settings.yaml``, ``AINODE_*``); the
port defaults to ``interactive_port`` and the models to ``regiongrow`` unless a models file
is given (see :mod:`.config`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from threadpoolctl import threadpool_limits

from ainode.settings import load_settings

from .app import create_app
from .config import InteractiveConfig

log = logging.getLogger(__name__)


def serve(config: InteractiveConfig, *, log_level: str = "info") -> None:
    """Serve until interrupted (blocking). Process-wide settings are applied here, once."""
    if config.cpu_threads:
        threadpool_limits(config.cpu_threads)  # BLAS (numpy, scipy) and OpenMP pools
        if any(m.kind == "sam2" for m in config.models.values()):
            import torch

            torch.set_num_threads(config.cpu_threads)
    app = create_app(config)
    log.info(
        "interactive service on %s:%d, models: %s",
        config.host,
        config.port,
        ", ".join(config.models),
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level.lower())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ainode_worker.interactive")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: settings.interactive_port)")
    parser.add_argument("--models", type=Path, help="YAML file with models and limits")
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = InteractiveConfig.from_settings(settings, args.models, **overrides)
    serve(config, log_level=settings.log_level)
