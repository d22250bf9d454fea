"""The model registry (``configs/models.yaml``): which models exist, their labels and inputs.

The label contract below is what DICOM exports need; the registry proper comes with the
inference engine.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Code(BaseModel):
    """A coded concept (e.g. SNOMED CT), as DICOM's (value, scheme, meaning) triple."""

    value: str
    scheme: str = "SCT"
    meaning: str


class LabelSpec(BaseModel):
    """One class of a model's label map and how it is described in DICOM exports."""

    value: int = Field(ge=1, le=65535, description="voxel value in the label map")
    name: str
    category: Code = Field(description="SegmentedPropertyCategory, e.g. 123037004 Anatomical")
    type: Code = Field(description="SegmentedPropertyType, e.g. SCT 10200004 Liver")
    anatomic_region: Code | None = None
    color: tuple[int, int, int] | None = Field(default=None, description="RGB 0-255 for viewers")
