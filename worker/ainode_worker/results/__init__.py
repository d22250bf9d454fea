"""Model results as conformant DICOM (SEG, RTSTRUCT, SR) and NIfTI, with deterministic UIDs."""

from .errors import EmptyResultError, ResultError, ResultInputError
from .export import WrittenResult, export_results, save_dicom
from .geometry import SliceGeometry
from .nifti import nifti_affine, nifti_image, write_nifti
from .provenance import Provenance
from .rtstruct import write_rtstruct
from .seg import write_seg
from .sources import SourceSeries
from .sr import write_sr
from .uids import ResultUids, result_uid, result_uids

__all__ = [
    "EmptyResultError",
    "Provenance",
    "ResultError",
    "ResultInputError",
    "ResultUids",
    "SliceGeometry",
    "SourceSeries",
    "WrittenResult",
    "export_results",
    "nifti_affine",
    "nifti_image",
    "result_uid",
    "result_uids",
    "save_dicom",
    "write_nifti",
    "write_rtstruct",
    "write_seg",
    "write_sr",
]
