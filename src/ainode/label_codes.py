"""Codes for label names the node knows, so an installed model's DICOM-SEG says what it found.

Keys are lower-case label names as nnU-Net datasets and TotalSegmentator write them. A name not
here gets the node's private coding scheme (``99AINODE``, DICOM's rule for local codes) and is
listed by ``ainode models add``, so a site can put the right code into ``models.yaml``.
"""

from __future__ import annotations

from ainode.registry import Code, LabelSpec

ANATOMY = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")
PHYSICAL_OBJECT = Code(value="260787004", scheme="SCT", meaning="Physical object")
PRIVATE_SCHEME = "99AINODE"

# name -> (category, type, anatomic region or None)
KNOWN: dict[str, tuple[Code, Code, Code | None]] = {
    "spleen": (ANATOMY, Code(value="78961009", meaning="Spleen"), None),
    "liver": (ANATOMY, Code(value="10200004", meaning="Liver"), None),
    "kidney_right": (ANATOMY, Code(value="9846003", meaning="Right kidney"), None),
    "kidney_left": (ANATOMY, Code(value="18639004", meaning="Left kidney"), None),
    "gallbladder": (ANATOMY, Code(value="28231008", meaning="Gallbladder"), None),
    "stomach": (ANATOMY, Code(value="69695003", meaning="Stomach"), None),
    "pancreas": (ANATOMY, Code(value="15776009", meaning="Pancreas"), None),
    "aorta": (ANATOMY, Code(value="15825003", meaning="Aorta"), None),
    "urinary_bladder": (ANATOMY, Code(value="89837001", meaning="Urinary bladder"), None),
    "esophagus": (ANATOMY, Code(value="32849002", meaning="Esophagus"), None),
    "heart": (ANATOMY, Code(value="80891009", meaning="Heart"), None),
    "brain": (ANATOMY, Code(value="12738006", meaning="Brain"), None),
    "trachea": (ANATOMY, Code(value="44567001", meaning="Trachea"), None),
    "sphere": (PHYSICAL_OBJECT, Code(value="122485", scheme="DCM", meaning="Sphere"), None),
    "box": (PHYSICAL_OBJECT, Code(value="706342009", meaning="Phantom"), None),
}


def coded_label(value: int, name: str) -> tuple[LabelSpec, bool]:
    """The registry label for ``name``, and whether a standard code was known for it."""
    known = KNOWN.get(name.lower())
    if known is None:
        meaning = name.replace("_", " ")
        return (
            LabelSpec(
                value=value,
                name=name,
                category=ANATOMY,
                type=Code(value=name[:16], scheme=PRIVATE_SCHEME, meaning=meaning[:64]),
            ),
            False,
        )
    category, kind, region = known
    return LabelSpec(
        value=value, name=name, category=category, type=kind, anatomic_region=region
    ), True
