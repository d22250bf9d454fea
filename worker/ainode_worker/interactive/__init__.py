"""Interactive segmentation for viewers: click, get a 3D mask, refine, accept as DICOM-SEG.

An HTTP service (FastAPI, :func:`create_app`; run with ``python -m ainode_worker.interactive``)
that keeps one session per series a user works on: the volume and each model's per-slice
features are computed once and reused by every later click. Methods: classical 3D region
growing (no weights), SAM 2 in PyTorch and SAM-family ONNX exports. It also speaks the subset
of MONAI Label's API that OHIF's and Slicer's MONAI Label clients use. See README.md here.
"""

from .app import create_app
from .config import InteractiveConfig
from .service import InteractiveService

__all__ = ["InteractiveConfig", "InteractiveService", "create_app"]
