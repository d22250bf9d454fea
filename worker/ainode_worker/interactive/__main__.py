"""``python -m ainode_worker.interactive``: see :mod:`.server`."""

from .server import main

main()
