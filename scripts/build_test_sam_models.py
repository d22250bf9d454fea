"""Build small SAM 2 models with random weights, reproducibly, for tests and benchmarks.

No real weights can be downloaded here, yet the real loading and inference paths must run.
This builds SAM 2.1 from the config packaged with ``sam2`` with a reduced Hiera trunk (hydra
overrides: embed_dim 24, stages [1, 1, 2, 1], a smaller input), seeded, then writes:

* ``sam2_reduced.pt``: ``{"model": state_dict}``, the layout of Meta's checkpoints, loaded back
  through ``sam2.build_sam.build_sam2`` (strict) to prove the round trip;
* ``sam2_reduced.encoder.onnx`` and ``sam2_reduced.decoder.onnx`` (opset 18): the interface
  SAM 2 ONNX deployments use (see ``ainode_worker.interactive.backends.sam2_modules``),
  checked against PyTorch with ONNX Runtime;
* ``interactive-models.yaml``: a models file for the interactive service naming all three
  backends (paths relative to the file).

Usage: ``python scripts/build_test_sam_models.py OUT_DIR [--image-size 512] [--seed 0]``.
Random weights give random masks: use these models for shapes, determinism and plumbing,
never for quality.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ainode_worker.interactive.backends.sam2_modules import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_OUTPUTS,
    Sam2ImageEncoder,
    Sam2PromptDecoder,
)
from sam2.build_sam import build_sam2

log = logging.getLogger("build_test_sam_models")

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OPSET = 18
STEM = "sam2_reduced"


def reduced_overrides(image_size: int) -> list[str]:
    """Hydra overrides that shrink Hiera-T so a slice encodes in well under a second on CPU."""
    return [
        "++model.image_encoder.trunk.embed_dim=24",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]",
        f"++model.image_size={image_size}",
    ]


def build(out_dir: Path, *, image_size: int = 512, seed: int = 0, onnx: bool = True) -> Path:
    """Write checkpoint, ONNX files and a models file into ``out_dir``; return the models file."""
    if image_size % 64:
        raise ValueError("the image size must be a multiple of 64")
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = reduced_overrides(image_size)
    torch.manual_seed(seed)
    model = build_sam2(CONFIG, None, device="cpu", hydra_overrides_extra=overrides)
    checkpoint = out_dir / f"{STEM}.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    reloaded = build_sam2(CONFIG, str(checkpoint), device="cpu", hydra_overrides_extra=overrides)
    models: dict[str, dict[str, object]] = {
        "regiongrow": {"kind": "regiongrow"},
        "sam2": {
            "kind": "sam2",
            "checkpoint": checkpoint.name,
            "config": CONFIG,
            "hydra_overrides": overrides,
            "device": "cpu",
        },
    }
    if onnx:
        encoder_path, decoder_path = export_onnx(reloaded, out_dir, image_size, seed)
        models["sam-onnx"] = {
            "kind": "sam-onnx",
            "encoder": encoder_path.name,
            "decoder": decoder_path.name,
        }
    models_file = out_dir / "interactive-models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    log.info("wrote %s", models_file)
    return models_file


def export_onnx(model: torch.nn.Module, out_dir: Path, size: int, seed: int) -> tuple[Path, Path]:
    encoder = Sam2ImageEncoder(model).eval()
    decoder = Sam2PromptDecoder(model).eval()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, size, size, generator=generator)
    with torch.inference_mode():
        features = _decoder_order(encoder(image))
    mask = size // 4
    prompts = (
        torch.tensor([[[size * 0.4, size * 0.5], [size * 0.6, size * 0.5]]]),
        torch.tensor([[1.0, 0.0]]),
        torch.zeros(1, 1, mask, mask),
        torch.zeros(1),
        torch.tensor([float(size), float(size)]),
    )
    encoder_path = out_dir / f"{STEM}.encoder.onnx"
    decoder_path = out_dir / f"{STEM}.decoder.onnx"
    torch.onnx.export(
        encoder,
        (image,),
        str(encoder_path),
        input_names=["image"],
        output_names=list(ENCODER_OUTPUTS),
        opset_version=OPSET,
        dynamo=False,
    )
    torch.onnx.export(
        decoder,
        (*features, *prompts),
        str(decoder_path),
        input_names=list(DECODER_INPUTS),
        output_names=list(DECODER_OUTPUTS),
        dynamic_axes={
            "point_coords": {1: "num_points"},
            "point_labels": {1: "num_points"},
            "masks": {2: "height", 3: "width"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    _check_onnx(encoder, decoder, encoder_path, decoder_path, image, prompts)
    return encoder_path, decoder_path


def _decoder_order(features: tuple[Any, ...]) -> tuple[Any, ...]:
    """Encoder outputs (high_res_feats_0, _1, image_embed) in the decoder's input order."""
    high_res_0, high_res_1, embed = features
    return embed, high_res_0, high_res_1


def _check_onnx(
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    encoder_path: Path,
    decoder_path: Path,
    image: torch.Tensor,
    prompts: tuple[torch.Tensor, ...],
) -> None:
    """Fail loudly if ONNX Runtime disagrees with PyTorch on the export's own inputs."""
    import onnxruntime as ort

    encoder_session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder_session = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        features = _decoder_order(encoder(image))
        expected = decoder(*features, *prompts)
    got_features = _decoder_order(tuple(encoder_session.run(None, {"image": image.numpy()})))
    feeds = dict(zip(DECODER_INPUTS, [*got_features, *(p.numpy() for p in prompts)], strict=True))
    got = decoder_session.run(None, feeds)
    worst = max(
        float(np.abs(np.asarray(a) - b.numpy()).max())
        for a, b in zip([*got_features, *got], [*features, *expected], strict=True)
    )
    log.info("ONNX Runtime vs PyTorch: max abs difference %.2e", worst)
    if worst > 1e-3:
        raise RuntimeError(f"ONNX export disagrees with PyTorch by {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    build(args.out_dir, image_size=args.image_size, seed=args.seed, onnx=not args.no_onnx)


if __name__ == "__main__":
    main()
