"""The worker's Celery application: ``celery -A ainode_worker.celery_app worker``.

Settings come from the same sources as every other part of the node (``AINODE_SETTINGS`` names
the effective settings file that ``ainode up`` writes). Task modules are imported by Celery's
``include`` so heavy libraries load in the worker only.
"""

from __future__ import annotations

import logging

from ainode.broker import make_celery
from ainode.settings import Settings
from ainode_worker import runtime

settings = Settings()
logging.basicConfig(
    level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
app = make_celery(settings)
app.conf.include = ["ainode_worker.tasks"]
runtime.install(app, settings)  # reports devices; GPU queues only with usable CUDA
