"""Build the demo ONNX model (``demo-phantom-onnx``): a fixed-weight 3D network, reproducibly.

The graph is small but real: a 3x3x3 convolution (mild smoothing: centre 0.4, each face
neighbour 0.1) followed by per-class scores ``-(x - mu_k)^2 / (2 sigma^2)`` for background
(0 HU) and object (the phantoms' lowest object CT number, 120 HU), so its segmentation of
``ainode.phantoms`` is known: label 1 "object" wherever the smoothed image exceeds 60 HU. An
intensity model cannot tell a sphere from a box (the phantoms give both the same CT numbers),
so it has one label for both; telling them apart is the nnU-Net model's work. The input patch
is fixed (1 x C x 32 x 48 x 48) so the worker must run it as a sliding window.

``--gate-channel`` builds a two-channel variant: channel 2 is a previous stage's label map and
the model only finds objects where it is non-zero (exercises cascades with ``mode: channel``).

Usage::

    python scripts/build_test_onnx_model.py   # -> sample-data/models/demo-phantom-onnx/model.onnx
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ainode.phantoms import BACKGROUND_HU, OBJECT_HU

log = logging.getLogger("build_test_onnx_model")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "sample-data" / "models" / "demo-phantom-onnx" / "model.onnx"
PATCH = (32, 48, 48)
SIGMA_HU = 30.0


def build(gate_channel: bool = False) -> onnx.ModelProto:
    channels = 2 if gate_channel else 1
    kernel = np.zeros((1, channels, 3, 3, 3), dtype=np.float32)
    kernel[0, 0, 1, 1, 1] = 0.4
    for offset in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        kernel[(0, 0, *offset)] = 0.1
    # Equal sigmas: the classes meet half-way, at 60 HU, 3 noise sd above smoothed background.
    means = np.array([BACKGROUND_HU, OBJECT_HU[0]], dtype=np.float32).reshape(1, 2, 1, 1, 1)
    scale = np.array(-1.0 / (2 * SIGMA_HU**2), dtype=np.float32)
    initializers = [
        numpy_helper.from_array(kernel, "smooth_kernel"),
        numpy_helper.from_array(means, "class_means"),
        numpy_helper.from_array(scale, "scale"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "smooth_kernel"], ["smoothed"], pads=[1] * 6),
        helper.make_node("Sub", ["smoothed", "class_means"], ["distance"]),
        helper.make_node("Mul", ["distance", "distance"], ["squared"]),
        helper.make_node("Mul", ["squared", "scale"], ["scores" if gate_channel else "logits"]),
    ]
    if gate_channel:
        initializers += [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one_i"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "two_i"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_i"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_f"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one_f"),
            numpy_helper.from_array(
                np.array([0.0, -1000.0], dtype=np.float32).reshape(1, 2, 1, 1, 1),
                "veto",
            ),
        ]
        nodes += [
            helper.make_node("Slice", ["image", "one_i", "two_i", "axis_i"], ["previous"]),
            helper.make_node("Clip", ["previous", "zero_f", "one_f"], ["inside"]),
            helper.make_node("Sub", ["one_f", "inside"], ["outside"]),
            helper.make_node("Mul", ["outside", "veto"], ["penalty"]),
            helper.make_node("Add", ["scores", "penalty"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        "demo_phantom_gated" if gate_channel else "demo_phantom",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, *PATCH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, *PATCH])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ainode"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--gate-channel", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(args.gate_channel), args.output)
    log.info("wrote %s (%d bytes)", args.output, args.output.stat().st_size)


if __name__ == "__main__":
    main()
