"""Command-line interface: argument parsing only; each subcommand calls one library function.

Each `cmd_*` imports its library module when it runs, so `synapse7 --help` and light commands do not pay for
Lightning, sklearn or ONNX start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from synapse7 import __version__
from synapse7.backbones import WeightsUnavailableError
from synapse7.config import (
    PRECISIONS,
    RESIZE_KERNELS,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    check_precision,
    load_config,
)
from synapse7.data import LayoutError
from synapse7.io import BadImageError, printable_path
from synapse7.spectrum import parse_input_mode

Handler = Callable[[argparse.Namespace], int]


def _input_mode(value: str) -> str:
    try:
        parse_input_mode(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _csv_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _pair(kind: type) -> Callable[[str], tuple]:
    """argparse type for 'LO,HI' ranges (e.g. --aug-jpeg-quality 30,100)."""

    def parse(value: str) -> tuple:
        parts = [v.strip() for v in value.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            lo, hi = kind(parts[0]), kind(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO,HI ({kind.__name__}s), got {value!r}") from None
        if lo > hi:
            raise argparse.ArgumentTypeError(f"expected LO <= HI, got {value!r}")
        return lo, hi

    return parse


def _bounded(kind: type, lo: float, hi: float | None = None) -> Callable[[str], Any]:
    """An argparse type: `kind` within [lo, hi]; outside it is a usage error naming the range."""

    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n integer' if kind is int else ' number'}: {value!r}"
            ) from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: expected {lo}..{hi}"
                if hi is not None
                else f"{value} is out of range: expected >= {lo}"
            )
        return v

    return parse


def _roots(value: Any) -> Any:
    """--data given once is one root (a string); repeated, a tuple of roots."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else tuple(value)
    return value


def _add_data_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        metavar="ROOT",
        action="append",
        help="dataset root in the GenImage layout: ROOT/<generator>/{train,val}/{ai,nature}/; repeat "
        "it to merge several roots (generators keep their names)",
    )
    p.add_argument("--batch-size", type=_bounded(int, 1), help="images per batch (default 32)")
    p.add_argument("--num-workers", type=_bounded(int, 0), help="data-loading worker processes (default 2)")
    p.add_argument(
        "--on-bad-image",
        choices=["skip", "error"],
        help="corrupt/truncated/empty images: skip them with a printed count (default) or stop",
    )
    p.add_argument(
        "--align",
        metavar="png|jpeg:Q|none",
        help="re-encode every image of both classes identically, removing the file-format shortcut",
    )


def _positive_square(value: str) -> int:
    from synapse7.transforms import grid_side

    try:
        n = int(value)
        grid_side(n)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return n


ENSEMBLE_HELP = (
    "; give it more than once for an ensemble: P(AI) from the mean of the models' logits (they must preprocess "
    "images alike)"
)


def _add_checkpoint(p: argparse.ArgumentParser, *, required: bool = True, several: bool = False) -> None:
    default = "" if required else " (default: the shipped model, see `synapse7 info`)"
    p.add_argument(
        "--checkpoint",
        required=required,
        action="append" if several else "store",
        metavar="CKPT",
        help=f"a Synapse-7 model: a .ckpt, NAME.safetensors or a model folder{default}"
        + (ENSEMBLE_HELP if several else ""),
    )


def _add_split(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--split", default="val", help=f"the split folder to {verb} (default val)")


def _add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=_bounded(float, 0, 1),
        help="decision threshold on P(AI), in [0, 1] (default: the checkpoint's, 0.5 once calibrated)",
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it only shows on a terminal, so piped output never has one)",
    )


def _add_crops(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--crops",
        type=_positive_square,
        metavar="N",
        help="evaluation/prediction: score N = k*k crops on a grid covering the image and combine their "
        "logits, instead of the one centre crop (default: the model's setting, 1)",
    )
    p.add_argument(
        "--tta",
        choices=["none", "flip"],
        help="test-time augmentation: flip scores each image and its mirror image and averages the logits "
        "(twice the compute; default: the model's setting, none)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="writes best.ckpt, last.ckpt, config.yaml, logs/"
    )
    p.add_argument(
        "--config", metavar="YAML", help="YAML file with data/model/train sections (flags override it)"
    )
    p.add_argument("--epochs", type=_bounded(int, 1), help="training epochs, >= 1 (default 5)")
    p.add_argument(
        "--image-size",
        type=_bounded(int, 8),
        help="centre-crop size (default 224); the resize scales as 256/224",
    )
    p.add_argument("--resize-size", type=_bounded(int, 8), help="override the resize size")
    p.add_argument(
        "--resize-interpolation",
        choices=RESIZE_KERNELS,
        help="resize kernel (default bilinear, antialiased); nearest repeats pixels exactly when up-sampling",
    )
    p.add_argument(
        "--preprocess",
        choices=["resize", "crop"],
        help="resize then crop (reference), or crop at native resolution (keeps high frequencies)",
    )
    p.add_argument(
        "--train-crop",
        choices=["random", "center"],
        help="with --preprocess crop: a random crop per image and epoch (default) or the centre crop",
    )
    _add_crops(p)
    p.add_argument(
        "--crop-vote",
        choices=["mean", "max"],
        help="how the logits of an image's crops are combined (default mean)",
    )
    p.add_argument(
        "--backbone",
        help="resnet34 (default), resnet18, resnet50, convnext_tiny, swin_t, efficientnet_lite0/1/2, npr_resnet",
    )
    p.add_argument(
        "--weights",
        metavar="imagenet|none|PATH",
        help="initial weights (default imagenet, from the local cache)",
    )
    p.add_argument(
        "--input",
        metavar="MODE",
        type=_input_mode,
        help="model input: rgb+fft (default: image and its spectrum), fft (the reference), rgb, or artefact residuals npr / hh / srm, alone or joined with + (e.g. rgb+npr)",
    )
    p.add_argument(
        "--trainable",
        metavar="PARTS",
        help="'all', or comma list of stem,stage1..stage4,head or module names (e.g. layer3,layer4,fc)",
    )
    p.add_argument(
        "--strategy",
        choices=["frozen-early", "linear-probe", "full"],
        help="freezing strategy, a named --trainable (for the multi-GPU strategy see --dist-strategy)",
    )
    p.add_argument("--lr", type=_bounded(float, 0), help=f"AdamW learning rate (default {TrainConfig.lr:g})")
    p.add_argument(
        "--weight-decay",
        type=_bounded(float, 0),
        help=f"AdamW weight decay (default {TrainConfig.weight_decay:g})",
    )
    p.add_argument(
        "--label-smoothing",
        type=_bounded(float, 0, 0.5),
        metavar="E",
        help="train against targets E/2 and 1 - E/2 instead of 0 and 1 (default 0)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=_bounded(float, 0),
        metavar="N",
        help="raise the learning rate linearly over N epochs, then a cosine to 0, per step (default 0: a "
        "cosine over epochs, per epoch)",
    )
    p.add_argument(
        "--ema-decay",
        type=_bounded(float, 0, 0.99999),
        metavar="D",
        help="keep an exponential moving average of the weights (decay D per step, e.g. 0.995); validation "
        "and checkpoints use it (default 0: off)",
    )
    p.add_argument("--seed", type=int, help="random seed of data order, augmentation and initialisation")
    p.add_argument(
        "--train-generators", type=_csv_list, metavar="G1,G2", help="train only on these generators"
    )
    p.add_argument(
        "--test-generators", type=_csv_list, metavar="G1,G2", help="validate only on these generators"
    )
    p.add_argument("--accelerator", help="auto (default), cpu, gpu")
    p.add_argument("--devices", help="number of devices or 'auto'")
    p.add_argument("--num-nodes", type=_bounded(int, 1), help="nodes for multi-node DDP")
    p.add_argument(
        "--dist-strategy", help="Lightning distribution strategy: auto (default), ddp, ddp_spawn, ..."
    )
    _add_precision(p, default=None, shown=TrainConfig.precision)
    p.add_argument(
        "--limit-train-batches",
        type=_bounded(float, 1e-9),
        help="fraction (<=1) or number of training batches per epoch",
    )
    p.add_argument(
        "--feature-cache",
        metavar="DIR",
        help="cache the frozen stages' outputs (fp16, memory-mapped) in DIR and train the rest on them; "
        "refused, with the reason printed, under random augmentation",
    )
    p.add_argument(
        "--fast-decode",
        action="store_true",
        default=None,
        help="decode large JPEGs at reduced scale (libjpeg-turbo DCT scaling); see docs/performance.md",
    )
    aug = p.add_argument_group("training-time robustness augmentation (CNNSpot-style; per image, seeded)")
    for name, range_type, help_ in AUG_FLAGS:
        default = getattr(DataConfig, f"aug_{name}")
        shown = ",".join(f"{v:g}" for v in default) if range_type else f"{default:g}"
        scalar = int if isinstance(default, int) and not isinstance(default, bool) else float
        # probabilities lie in [0, 1]; other scalars (degrees, jitter, patch size) are >= 0
        kind = _pair(range_type) if range_type else _bounded(scalar, 0, 1 if name.endswith("_prob") else None)
        aug.add_argument(
            f"--aug-{name.replace('_', '-')}",
            type=kind,
            metavar="LO,HI" if range_type else ("P" if name.endswith("_prob") else "X"),
            help=f"{help_} (default {shown})",
        )
    p.add_argument(
        "--calibrate",
        metavar="accuracy|fpr:T",
        help="after training, choose the decision threshold on the validation data (best accuracy, or "
        "the highest TPR at FPR <= T) and store it in best.ckpt",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from RUN_DIR/last.ckpt")
    _add_no_progress(p)


# Training augmentation flags --aug-<name>: DataConfig field aug_<name> (which holds the default), the type of
# a LO,HI range's ends (None: a probability), help.
AUG_FLAGS: tuple[tuple[str, type | None, str], ...] = (
    ("blur_prob", None, "probability of a Gaussian blur"),
    ("blur_sigma", float, "blur sigma range"),
    ("jpeg_prob", None, "probability of JPEG re-compression"),
    ("jpeg_quality", int, "JPEG quality range"),
    ("resize_prob", None, "probability of a random resize"),
    ("resize_scale", float, "resize factor range"),
    ("flip_prob", None, "probability of a horizontal flip"),
    # SAFE-style (synapse7.perturb): rotation and colour jitter before the training crop, masking after it
    ("rotate_prob", None, "probability of a random rotation"),
    ("rotate_degrees", None, "rotation range, +-X degrees"),
    ("jitter_prob", None, "probability of colour jitter"),
    ("jitter", None, "brightness/contrast/saturation factors drawn from [1-X, 1+X]"),
    ("mask_prob", None, "probability of masking random patches of the training crop"),
    ("mask_ratio", float, "share of the crop masked, drawn from this range"),
    ("mask_patch", None, "masked patch size in pixels"),
)


def config_from_args(args: argparse.Namespace):
    """Resolve YAML defaults + flags into a RunConfig."""
    limit = args.limit_train_batches
    if limit is not None and limit > 1:
        limit = int(limit)
    return load_config(
        getattr(args, "config", None),
        data={
            "root": _roots(args.data),
            "image_size": args.image_size,
            "resize_size": args.resize_size,
            "resize_interpolation": getattr(args, "resize_interpolation", None),
            "preprocess": args.preprocess,
            "train_crop": args.train_crop,
            "crops": args.crops,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "on_bad_image": args.on_bad_image,
            "align": args.align,
            "train_generators": args.train_generators,
            "test_generators": args.test_generators,
            "fast_decode": getattr(args, "fast_decode", None),
            **{f"aug_{name}": getattr(args, f"aug_{name}", None) for name, _, _ in AUG_FLAGS},
        },
        model={
            "backbone": args.backbone,
            "weights": args.weights,
            "input": args.input,
            "trainable": args.strategy or args.trainable,
            "crop_vote": args.crop_vote,
            "tta": args.tta,
        },
        train={
            "epochs": args.epochs,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
            "accelerator": args.accelerator,
            "devices": args.devices,
            "num_nodes": args.num_nodes,
            "dist_strategy": args.dist_strategy,
            "precision": args.precision,
            "limit_train_batches": limit,
            "label_smoothing": args.label_smoothing,
            "warmup_epochs": args.warmup_epochs,
            "ema_decay": args.ema_decay,
            "feature_cache": getattr(args, "feature_cache", None),
        },
    )


def _precision(value: str) -> str:
    try:
        return check_precision(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_precision(p: argparse.ArgumentParser, *, default: str | None = "auto", shown: str = "auto") -> None:
    p.add_argument(
        "--precision",
        type=_precision,
        default=default,
        metavar="|".join(PRECISIONS),
        help=f"the network's number format (default {shown}). auto: bf16 on a GPU, fp32 on the CPU; "
        "bf16 on the CPU needs native bf16 (AVX512-BF16/AMX: 1.8-2.5x the fp32 forward there; P(AI) "
        "moves a little and labels near the threshold can flip, see docs/performance.md); fp16: GPU "
        "only. Training runs bf16/fp16 as mixed precision",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from synapse7.train import train

    cfg = config_from_args(args)
    if args.calibrate:
        from synapse7.calibration import parse_calibration_spec

        parse_calibration_spec(args.calibrate)  # a bad spec fails before training, not after
    res = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if not res.is_global_zero:  # other DDP processes: rank 0 calibrates and reports
        return 0
    if args.calibrate:
        from synapse7.calibration import calibrate_after_training

        calibrate_after_training(res.best_ckpt, cfg, args.calibrate)
    print(
        json.dumps(
            {
                "best_ckpt": str(res.best_ckpt),
                "last_ckpt": str(res.last_ckpt),
                "best_val_auc": res.best_val_auc,
                "epochs": res.epochs_run,
                "steps": res.global_step,
                "bad_images": res.bad_images,
            }
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from synapse7.evaluate import evaluate
    from synapse7.predict import Detector

    # One detector (or ensemble) for both: the normal reports always; --perturb adds the robustness ones.
    det = Detector.from_checkpoints(
        args.checkpoint,
        device=args.device,
        threshold=args.threshold,
        precision=args.precision,
        crops=args.crops,
        tta=args.tta,
    )
    checkpoint = " + ".join(args.checkpoint)
    evaluate(
        checkpoint,
        args.data,
        split=args.split,
        out_dir=args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        generators=args.generators,
        on_bad_image=args.on_bad_image,
        align=args.align,
        progress=not args.no_progress,
        detector=det,  # threshold, device, precision, crops and TTA are set in it
    )
    print(f"reports written to {args.out}", file=sys.stderr)
    if args.perturb:
        from synapse7.robustness import evaluate_robustness, robustness_markdown, write_robustness

        specs = [s.strip() for s in args.perturb.split(",") if s.strip()]
        if "none" not in specs:  # the unperturbed reference point every panel of the plot shows
            specs.append("none")
        res = evaluate_robustness(
            checkpoint,
            args.data,
            specs,
            split=args.split,
            align=args.align,
            generators=args.generators,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            on_bad_image=args.on_bad_image,
            detector=det,  # the same models, threshold, crops and TTA as the normal reports
            log=lambda m: print(m, file=sys.stderr),
        )
        write_robustness(res, args.out)
        print(robustness_markdown(res))
        print(f"robustness.csv/.md/.json/.png written to {args.out}", file=sys.stderr)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from synapse7.calibration import calibrate_checkpoint

    dst = Path(args.out or args.checkpoint)
    png = args.reliability or dst.with_name(dst.stem + "_reliability.png")
    info = calibrate_checkpoint(
        args.checkpoint,
        args.data,
        split=args.split,
        method=args.method,
        target_fpr=args.target_fpr,
        out=args.out,
        generators=args.generators,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        quiet=False,
        reliability_png=png,
    )
    print(
        json.dumps(
            {
                k: info[k]
                for k in (
                    "checkpoint",
                    "raw_threshold",
                    "temperature",
                    "method",
                    "target_fpr",
                    "accuracy",
                    "fpr",
                    "tpr",
                    "ece",
                    "ece_uncalibrated",
                    "previous_threshold",
                    "previous_accuracy",
                    "n",
                    "reliability_png",
                )
            }
        )
    )
    return 0


def cmd_crossgen(args: argparse.Namespace) -> int:
    from synapse7.crossgen import crossgen_markdown, run_crossgen

    hook = None
    if args.calibrate:
        from synapse7.calibration import calibrate_after_training, parse_calibration_spec

        parse_calibration_spec(args.calibrate)
        hook = partial(calibrate_after_training, spec=args.calibrate)
    cfg = config_from_args(args)
    res = run_crossgen(cfg, args.out, mode=args.mode, progress=not args.no_progress, calibrate=hook)
    print(crossgen_markdown(res, cfg))
    print(f"crossgen.md/.csv/.json written to {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from synapse7.predict import Detector, ResumableOutput, expand_inputs, format_prediction, progress_bar

    fast = True if args.fast_decode else None
    if args.checkpoint is None and args.onnx is None:  # the shipped default model (hash-checked)
        det = Detector.default(
            device=args.device,
            threshold=args.threshold,
            engine=args.engine,
            compile=args.compile,
            fast_decode=fast,
            precision=args.precision,
            crops=args.crops,
            tta=args.tta,
            gpu_decode=args.gpu_decode,
        )
    elif args.checkpoint is None:
        det = Detector.from_onnx(
            args.onnx,
            device=args.device,
            threshold=args.threshold,
            fast_decode=fast,
            crops=args.crops,
            tta=args.tta,
            gpu_decode=args.gpu_decode,
        )
    else:
        engine = "onnx" if args.onnx is not None else args.engine
        det = Detector.from_checkpoints(
            args.checkpoint,
            device=args.device,
            threshold=args.threshold,
            engine=engine,
            onnx=args.onnx,
            compile=args.compile,
            fast_decode=fast,
            precision=args.precision,
            crops=args.crops,
            tta=args.tta,
            gpu_decode=args.gpu_decode,
        )
    if args.resume and not args.output:
        print("synapse7 predict: error: --resume needs --output FILE", file=sys.stderr)
        return 2
    if (
        det.threshold != 0.5
    ):  # e.g. a checkpoint calibrated before P(AI) itself was (calibrate now stores 0.5)
        print(f"note: threshold {det.threshold:.4g}: AI means P(AI) >= {det.threshold:.4g}", file=sys.stderr)
    # Every input is attempted; each failure (URL, missing path, empty folder, unreadable or too small image) is
    # an ERROR row with its reason. Exit 0 only when every input was classified, 1 when any failed.
    items = expand_inputs(args.paths)
    out = ResumableOutput(args.output, resume=args.resume, as_json=args.json) if args.output else None
    failed = 0
    if out is not None and out.done:
        done = [out.done[k] for k in map(printable_path, (it.path for it in items)) if k in out.done]
        failed = done.count("ERROR")  # inputs that failed before still count against the exit status
        items = [it for it in items if printable_path(it.path) not in out.done]
        print(f"resuming: {len(done)} input(s) already done, {len(items)} new", file=sys.stderr)
    try:
        with progress_bar(len(items), "predict", enabled=not args.no_progress) as bar:
            for p in det.predict_items(
                items, batch_size=args.batch_size, num_workers=args.num_workers, gpu_share=args.gpu_share
            ):
                bar.update(1)
                if p.error is not None:
                    failed += 1
                    print(f"warning: {p.path}: {p.error}", file=sys.stderr)
                if out is not None:
                    out.write(p)
                else:
                    print(format_prediction(p, as_json=args.json), flush=True)
        if out is not None:
            out.finish()
    finally:
        if out is not None:
            out.close()
    if failed:
        print(f"{failed} input(s) could not be classified (label ERROR)", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from synapse7.export import export_onnx
    from synapse7.predict import Detector

    if args.format == "safetensors":
        from synapse7.modelfile import export_checkpoint
        from synapse7.predict import load_checkpoint

        if args.image_size is not None:
            raise ValueError("--image-size applies to --format onnx only")
        weights = export_checkpoint(load_checkpoint(args.checkpoint), args.out, dtype=args.dtype)
        print(
            json.dumps(
                {
                    "safetensors": str(weights),
                    "json": str(weights.with_suffix(".json")),
                    "dtype": args.dtype,
                    "bytes": weights.stat().st_size,
                }
            )
        )
        return 0
    if args.dtype != "fp32":
        raise ValueError("--dtype applies to --format safetensors only (the ONNX export runs in fp32)")
    det = Detector.from_checkpoint(args.checkpoint, device="cpu")
    assert det.net is not None
    # The graph outputs the network's own P(AI): store the threshold on that scale (calibrate's scaling is not in
    # the graph, so a standalone export reports uncalibrated P(AI) with the same labels).
    out = export_onnx(det.net, det.cfg, args.out, threshold=det.raw_threshold, image_size=args.image_size)
    print(
        json.dumps(
            {
                "onnx": str(out),
                "image_size": args.image_size or det.cfg.data.image_size,
                "bytes": out.stat().st_size,
            }
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from synapse7.demo import run_default_demo, run_demo

    if not args.train:
        if args.data is not None:
            raise ValueError(
                "demo --data needs --train (the default demo runs the shipped model on its own images)"
            )
        run_default_demo(args.out)
        return 0
    run_demo(
        args.out,
        data=args.data,
        image_size=args.image_size,
        epochs=args.epochs,
        backbone=args.backbone,
        weights=args.weights,
        input_mode=args.input,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from synapse7.audit import run_audit

    run_audit(args.root, args.out, args.split, threshold=args.threshold, verify=args.verify)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from synapse7.serve import create_app, exposure_warning
    except ImportError as e:
        return _missing_extra("serve", e, "serve")
    from synapse7.predict import Detector

    token = args.token or os.environ.get("SYNAPSE7_TOKEN") or None
    if args.checkpoint is None:  # the shipped default model (hash-checked)
        det = Detector.default(device=args.device, threshold=args.threshold)
    else:  # one checkpoint, or an ensemble of several
        det = Detector.from_checkpoints(args.checkpoint, device=args.device, threshold=args.threshold)
    app = create_app(
        det,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_files=args.max_files,
        max_request_bytes=int(args.max_request_mb * 2**20),
        token=token,
        rate_limit=args.rate_limit or None,
    )
    warning = exposure_warning(args.host, token)
    if warning:
        print(f"synapse7 serve: warning: {warning}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from synapse7.modelfile import default_model_info, model_summary

    info = default_model_info()
    print(json.dumps(info, indent=2) if args.json else model_summary(info))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from synapse7.backbones import registry_table

    print(registry_table(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synapse7",
        description="Synapse-7: detect AI-generated images from how they were built (pixel residuals, spectra).",
    )
    parser.add_argument("--version", action="version", version=f"synapse7 {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors (also SYNAPSE7_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a detector", description="Train on a GenImage-layout dataset.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (or an ensemble) and write reports")
    _add_data_args(p)
    _add_checkpoint(p, several=True)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    _add_split(p, "evaluate")
    p.add_argument(
        "--generators",
        "--test-generators",
        dest="generators",
        type=_csv_list,
        metavar="G1,G2",
        help="evaluate only these generators (default: all found)",
    )
    _add_threshold(p)
    _add_device(p)
    _add_crops(p)
    p.add_argument(
        "--perturb",
        metavar="LIST",
        help="evaluate under each perturbation of a comma list, e.g. "
        "jpeg:95,jpeg:65,jpeg:30,resize:0.5,resize:0.25,blur:1,blur:3,none; writes robustness.csv/"
        ".md/.json/.png (after --align's re-encoding, if given), besides the normal reports",
    )
    _add_precision(p)
    _add_no_progress(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="choose the decision threshold on validation data, store it in a checkpoint",
        description="Score a split, choose the threshold (best accuracy, or highest TPR at a target "
        "FPR), report the ECE, and store threshold and calibration in the checkpoint.",
    )
    _add_data_args(p)
    _add_checkpoint(p)
    _add_split(p, "calibrate on")
    p.add_argument("--generators", type=_csv_list, metavar="G1,G2", help="calibrate on these generators only")
    p.add_argument(
        "--method",
        choices=["accuracy", "fpr"],
        default="accuracy",
        help="threshold rule: best accuracy (default), or the highest TPR at FPR <= --target-fpr",
    )
    p.add_argument(
        "--target-fpr",
        type=_bounded(float, 0, 1),
        default=0.05,
        help="with --method fpr: largest real-image FPR, in [0, 1] (default 0.05)",
    )
    p.add_argument(
        "--out", metavar="NEW.ckpt", help="write the calibrated checkpoint here (default: in place)"
    )
    p.add_argument(
        "--reliability",
        metavar="PNG",
        help="reliability diagram before/after calibration (default: <checkpoint>_reliability.png beside "
        "the written checkpoint)",
    )
    _add_device(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "crossgen",
        help="cross-generator protocols: train on one / test on all, leave one out",
        description="Train one model per row (into OUT/<mode>/<row>/run) and evaluate it on every "
        "test generator; writes crossgen.md/.csv/.json. Running it again skips finished "
        "sub-runs and resumes interrupted ones.",
    )
    _add_train_args(p)
    p.add_argument(
        "--mode",
        choices=["train-one-test-all", "leave-one-out"],
        default="train-one-test-all",
        help="rows are training generators (--train-generators picks them), or held-out generators",
    )
    p.set_defaults(func=cmd_crossgen)

    p = sub.add_parser("predict", help="classify image files or folders")
    _add_checkpoint(p, required=False, several=True)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="write JSON lines instead of tab-separated text")
    p.add_argument(
        "--output", metavar="FILE", help="write the lines to FILE (complete or absent) instead of stdout"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --output: keep the rows already in FILE (or its .partial) and classify only the inputs "
        "not yet in it",
    )
    _add_threshold(p)
    _add_crops(p)
    p.add_argument("--batch-size", type=_bounded(int, 1), default=32, help="images per batch (default 32)")
    p.add_argument(
        "--num-workers", type=_bounded(int, 0), default=2, help="decoding worker processes (default 2)"
    )
    _add_device(p)
    p.add_argument(
        "--engine",
        choices=["eager", "onnx"],
        default="eager",
        help="PyTorch (default) or ONNX Runtime (exports the checkpoint on the fly unless --onnx is given)",
    )
    p.add_argument(
        "--onnx", metavar="MODEL.onnx", help="an export from `synapse7 export` (implies --engine onnx)"
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the network (eager engine; pays off on GPU)"
    )
    _add_precision(p)
    p.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode large JPEGs at reduced scale (libjpeg-turbo DCT scaling; docs/performance.md)",
    )
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="decode JPEGs in batches on the GPU (nvJPEG) and resize/crop there; other files, and every file "
        "without a CUDA device, are decoded on the CPU as usual (docs/performance.md, GPU)",
    )
    p.add_argument(
        "--gpu-share",
        type=_bounded(float, 0, 1),
        metavar="F",
        help="with --gpu-decode: the share of JPEGs decoded on the GPU while the workers decode the rest "
        "(default: from measured rates, 11.6 / (11.6 + workers): all of them without workers, 45%% with 14)",
    )
    _add_no_progress(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (spectrum included) or safetensors + JSON",
        description="--format onnx: one .onnx file for ONNX Runtime. --format safetensors: "
        "NAME.safetensors (weights) + NAME.json (config, threshold, SHA-256), or "
        "DIR/model.safetensors + model.json; loading them runs no pickle.",
    )
    _add_checkpoint(p)
    p.add_argument(
        "--format", choices=["onnx", "safetensors"], default="onnx", help="export format (default onnx)"
    )
    p.add_argument(
        "--out", required=True, metavar="MODEL.onnx|NAME.safetensors|DIR", help="file or folder to write"
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="safetensors: number format of the stored weights (fp16 halves the file; default fp32)",
    )
    p.add_argument(
        "--image-size",
        type=_bounded(int, 8),
        help="onnx: input size S of the (B, 3, S, S) graph (default: the checkpoint's)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "demo",
        help="offline demo: the shipped model on images made here (--train: train one first)",
        description="Without --train: run the shipped default model on scikit-image's photographs "
        "and self-made fakes (synthesize's up-sampling chains). With --train: build "
        "stand-in data, train, evaluate and predict.",
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    p.add_argument("--train", action="store_true", help="the train -> evaluate -> predict demo instead")
    p.add_argument("--data", metavar="ROOT", help="with --train: run the same flow on a real dataset instead")
    p.add_argument(
        "--image-size",
        type=_bounded(int, 8),
        help="with --train: model input size (default 64 on the demo data, 224 with --data)",
    )
    p.add_argument(
        "--epochs", type=_bounded(int, 1), default=3, help="with --train: training epochs, >= 1 (default 3)"
    )
    p.add_argument(
        "--backbone",
        default="resnet34",
        help="with --train: backbone (default resnet34; see synapse7 backbones)",
    )
    p.add_argument(
        "--weights",
        default="none",
        metavar="imagenet|none|PATH",
        help="with --train: initial weights (default none: from scratch)",
    )
    p.add_argument(
        "--input",
        metavar="MODE",
        type=_input_mode,
        default=ModelConfig.input,
        help="model input (see train --help)",
    )
    p.add_argument(
        "--num-workers", type=_bounded(int, 0), default=2, help="data-loading worker processes (default 2)"
    )
    _add_no_progress(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "audit",
        help="audit a dataset for shortcuts (file format, JPEG quality, size, EXIF)",
        description="Read every file header, describe each generator/class and flag properties that "
        "alone separate ai from nature. Writes audit.md, audit.json and audit.png.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root in the GenImage layout")
    p.add_argument("--out", metavar="DIR", help="report folder (default: print the summary only)")
    p.add_argument(
        "--split",
        type=_csv_list,
        default=("train", "val"),
        metavar="S1,S2",
        help="splits to audit (default train,val; absent ones are skipped)",
    )
    p.add_argument(
        "--threshold",
        type=_bounded(float, 0, 1),
        default=0.75,
        help="flag a property when its one-feature balanced accuracy reaches this (default 0.75)",
    )
    p.add_argument(
        "--verify", action="store_true", help="also decode every image fully (slower; finds truncation)"
    )
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "serve",
        help="web service: upload page at / and a JSON API at /api/predict",
        description="Serve a checkpoint over HTTP (needs the 'serve' extra: fastapi, uvicorn).",
    )
    _add_checkpoint(p, required=False, several=True)
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--port", type=_bounded(int, 1, 65535), default=8000, help="TCP port, 1-65535 (default 8000)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=_bounded(float, 0.001),
        default=20.0,
        help="largest accepted file, in MiB (default 20)",
    )
    p.add_argument(
        "--max-files", type=_bounded(int, 1), default=32, help="most files per request (default 32)"
    )
    p.add_argument(
        "--max-request-mb",
        type=_bounded(float, 0.001),
        default=64.0,
        help="largest request body, in MiB; larger ones get 413 (default 64)",
    )
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on the model endpoints "
        "(default: $SYNAPSE7_TOKEN; none: open)",
    )
    p.add_argument(
        "--rate-limit",
        type=_bounded(float, 0),
        default=120.0,
        metavar="N",
        help="model requests per minute per client address, in bursts of up to N (default 120; 0: off)",
    )
    _add_threshold(p)
    _add_device(p)
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="the shipped default model: version, hash, and its model card's summary")
    p.add_argument("--json", action="store_true", help="print the model's JSON (config, figures) instead")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list the backbone registry")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser(
        "synthesize",
        help="make training fakes from real photos (one fake per photo, paired)",
        description="Write ROOT/synth_<method>/{train,val}/{ai,nature}/ (GenImage layout): every fake is "
        "made from one real photo, and both are saved the same way. Not real generator "
        "output: ROOT/README.md says what they are; ROOT/manifest.csv pairs them.",
    )
    p.add_argument(
        "--real", required=True, metavar="DIR", help="folder of real photos (searched recursively)"
    )
    p.add_argument(
        "--out", required=True, metavar="ROOT", help="output root (new methods may be added to one)"
    )
    p.add_argument(
        "--methods",
        default="all",
        metavar="M1,M2",
        help="up_nearest, up_bilinear, up_bicubic, up_tconv, ae_upconv, ae_tconv (synth_ prefix optional), "
        "or the groups chains, ae, all (default)",
    )
    p.add_argument(
        "--max-images", type=_bounded(int, 1), help="use at most this many photos (a seeded random subset)"
    )
    p.add_argument(
        "--size",
        type=_bounded(int, 8),
        help="square crop side, the same seeded crop for real and fake (default: native size)",
    )
    p.add_argument(
        "--val-fraction", type=_bounded(float, 0, 1), default=0.2, help="share of photos in val (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of crops, splits and decoders (default 0)")
    p.add_argument(
        "--format", default="png", metavar="png|jpeg:Q", help="file format of both classes (default png)"
    )
    p.add_argument("--workers", type=_bounded(int, 1), default=1, help="processes writing images (default 1)")
    p.add_argument(
        "--ae-steps",
        type=_bounded(int, 1),
        default=1500,
        help="autoencoder training steps (default 1500, ~2 CPU min each)",
    )
    p.add_argument(
        "--ae-max-seconds",
        type=_bounded(float, 0),
        help="also stop each autoencoder's training after this many seconds (output then not reproducible)",
    )
    p.add_argument(
        "--ae-factor", type=int, choices=[4, 8], default=4, help="autoencoder down-sampling (default 4)"
    )
    p.set_defaults(func=cmd_synthesize)
    _add_fingerprint_parser(sub)
    _add_sweep_parser(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser`, by name."""
    for action in parser._actions:  # argparse keeps them in its private list; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own usage, not the top level's (exits with status 2)
        subcommands(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "data"):
        args.data = _roots(args.data)
    # Expected user errors print one line; --debug (or SYNAPSE7_DEBUG=1) lets them raise with the traceback.
    debug = args.debug or os.environ.get("SYNAPSE7_DEBUG", "") not in ("", "0")
    expected: tuple[type[BaseException], ...] = (
        ConfigError,
        LayoutError,
        BadImageError,
        WeightsUnavailableError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        ValueError,
        OSError,
    )
    try:
        return int(args.func(args) or 0)
    except expected as e:
        if debug:
            raise
        print(f"synapse7 {args.command}: error: {_unwrap(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"synapse7 {args.command}: interrupted", file=sys.stderr)
        return 130


def _unwrap(e: BaseException) -> str:
    """The message of `e`; for an error re-raised from a DataLoader worker, the original one.

    torch re-raises a worker's exception in the main process as the same type with the message "Caught
    ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last): ... ValueError: msg";
    the last line holds the original message.
    """
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(e).__name__
    for prefix in (f"{type(e).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last.split(": ", 1)[-1]


def cmd_synthesize(args: argparse.Namespace) -> int:
    from synapse7.synthesize import SynthConfig, parse_methods, synthesize

    cfg = SynthConfig(
        methods=parse_methods(args.methods),
        size=args.size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_images=args.max_images,
        format=args.format,
        workers=args.workers,
        ae_steps=args.ae_steps,
        ae_max_seconds=args.ae_max_seconds,
        ae_factor=args.ae_factor,
    )
    res = synthesize(args.real, args.out, cfg)
    print(
        json.dumps(
            {
                "root": str(res.root),
                "pairs": len(res.rows),
                "skipped": len(res.bad),
                "methods": [f"synth_{m}" for m in cfg.methods],
                "seconds": res.seconds,
            }
        )
    )
    return 0


def _add_fingerprint_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fingerprint",
        help="mean spectra per generator and class (image and NPR residual)",
        description="Mean log-magnitude spectra of the images and of their NPR residual per generator "
        "and class, each generator minus the real class, and radial profiles; writes "
        "fingerprint.png, radial_profile.png and fingerprint.json to --out.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root in the GenImage layout")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes fingerprint.png, radial_profile.png, fingerprint.json",
    )
    _add_split(p, "average")
    p.add_argument("--image-size", type=int, default=256, help="centre-crop size, even (default 256)")
    p.add_argument(
        "--preprocess",
        choices=["crop", "resize"],
        default="crop",
        help="crop at native resolution (default: no resampling) or resize then crop as in training",
    )
    p.add_argument(
        "--generators", type=_csv_list, metavar="G1,G2", help="only these generators (default: all)"
    )
    p.add_argument(
        "--max-per-group", type=int, metavar="N", help="at most N images (seeded subset) per generator/class"
    )
    p.add_argument("--batch-size", type=_bounded(int, 1), default=32, help="images per batch (default 32)")
    p.add_argument(
        "--num-workers", type=_bounded(int, 0), default=2, help="data-loading worker processes (default 2)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--on-bad-image",
        choices=["skip", "error"],
        default="skip",
        help="unreadable images: skip them with a count (default) or stop",
    )
    p.add_argument(
        "--window",
        choices=["hann", "none"],
        default="hann",
        help="taper each image before its FFT (default hann: no border cross hiding the artefacts), or "
        "none: the plain spectrum the model sees",
    )
    p.add_argument(
        "--save-arrays", action="store_true", help="also write the mean spectra to fingerprint.npz"
    )
    _add_no_progress(p)
    p.set_defaults(func=cmd_fingerprint)


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from synapse7.fingerprint import compute_fingerprints, write_fingerprints

    res = compute_fingerprints(
        args.root,
        split=args.split,
        image_size=args.image_size,
        preprocess=args.preprocess,
        generators=args.generators,
        max_per_group=args.max_per_group,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        on_bad_image=args.on_bad_image,
        progress=not args.no_progress,
        window=args.window,
    )
    paths = write_fingerprints(res, args.out, save_arrays=args.save_arrays)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def _add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyper-parameter search with Optuna (TPE, pruning, resumable storage)",
        description="Search the YAML space (default: the packaged configs/sweep.yaml) with Optuna's "
        "TPE sampler, pruning on val ROC-AUC after each epoch. Writes OUT/trials/<n>/, "
        "trials.csv, history.png, importances.png and best.yaml (for train --config). "
        "With --storage the same command continues an interrupted sweep.",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root in the GenImage layout")
    p.add_argument("--out", required=True, metavar="DIR", help="trials, trials.csv, the plots and best.yaml")
    p.add_argument("--space", metavar="YAML", help="search space (base / space / pruner sections)")
    p.add_argument(
        "--trials",
        type=int,
        default=10,
        metavar="N",
        help="finished (completed or pruned) trials the study should hold, counting earlier runs (default 10)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting new trials after this long"
    )
    p.add_argument(
        "--storage", metavar="URL", help="e.g. sqlite:///sweep.db: persistent, resumable, shareable"
    )
    p.add_argument(
        "--study-name", default="synapse7", help="the study's name in --storage (default synapse7)"
    )
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="SECONDS",
        help="with --storage: a trial silent for twice this long counts as killed and is re-run",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every finished trial's checkpoints (default: only the best trial's)",
    )
    p.add_argument("--progress", action="store_true", help="show each trial's progress bar")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        from synapse7.sweep import run_sweep
    except ImportError as e:
        return _missing_extra("sweep", e, "sweep")
    if args.trials < 1 or args.heartbeat < 1:
        print("synapse7 sweep: error: --trials and --heartbeat must be positive", file=sys.stderr)
        return 2
    res = run_sweep(
        args.data,
        args.out,
        space=args.space,
        n_trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.seed,
        heartbeat=args.heartbeat,
        progress=args.progress,
        keep_checkpoints=args.keep_checkpoints,
    )
    print(
        json.dumps(
            {
                "best_val_auc": res.best_value,
                "best_trial": res.best_trial,
                "best_params": res.best_params,
                "best_yaml": str(res.best_yaml) if res.best_yaml else None,
                "complete": res.n_complete,
                "pruned": res.n_pruned,
                "failed": res.n_failed,
                "seconds": res.seconds,
            }
        )
    )
    return 0 if res.best_yaml is not None else 1


def _missing_extra(command: str, e: ImportError, extra: str) -> int:
    """Say which optional package a subcommand lacks and which extra installs it; returns the exit status."""
    print(
        f"synapse7 {command}: error: {e.name or e} is not installed; install the extra: pip install "
        f"'synapse7[{extra}]'",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
