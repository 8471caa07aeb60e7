"""The offline demos. `run_default_demo`: the shipped model on images made here (scikit-image's photographs and
self-made fakes from `synapse7 synthesize`'s up-sampling chains). `run_demo` (`demo --train`): a small
GenImage-layout dataset made here, then train -> evaluate -> predict.

In the training demo, `nature` images are crops of the photographs bundled with scikit-image. The `ai` images are NOT from real
generators: they are stand-ins made by running generator-style up-sampling decoders on those photos
(transposed convolution, nearest-neighbour and bilinear up-sampling), which leave the periodic spectral
artefacts real GAN/diffusion decoders leave. Both classes are saved as PNG, so file format is no shortcut.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synapse7.config import ModelConfig, load_config
from synapse7.evaluate import evaluate
from synapse7.io import ensure_writable_dir
from synapse7.predict import Detector, expand_paths
from synapse7.train import train

# Bundled scikit-image photographs (no download needed); grayscale ones are used as RGB.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "moon",
    "coins",
    "grass",
    "gravel",
    "brick",
    "retina",
    "motorcycle_left",
)


def load_photos() -> list[np.ndarray]:
    """HWC uint8 RGB photographs shipped inside scikit-image."""
    return list(load_named_photos().values())


def load_named_photos() -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs by name, as HWC uint8 RGB."""
    import skimage.data  # slow to import, and only the demo data needs it

    photos = {}
    for name in SKIMAGE_PHOTOS:
        fn = getattr(skimage.data, name, None)
        if fn is None:
            continue
        try:
            img = fn()
        except Exception:  # noqa: BLE001 - a photo needing a download is simply left out
            continue
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(1e-9, float(img.max())))).astype(np.uint8)
        photos[name] = img
    if len(photos) < 3:
        raise RuntimeError("scikit-image's bundled photographs are missing; reinstall scikit-image")
    return photos


def _random_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop after a random downscale (so crops vary in content scale, as real photos do).

    The region that the downscaled crop covers is cut from the photo first and only it is resized: the same
    picture as resizing the whole photo, at a fraction of the cost (the demo draws thousands of crops).
    """
    h, w = photo.shape[:2]
    scale = rng.uniform(size / min(h, w), 1.0) if min(h, w) > size else 1.0
    side = min(min(h, w), max(size, round(size / scale)))  # the region's side in the photo
    y = rng.integers(0, h - side + 1)
    x = rng.integers(0, w - side + 1)
    region = Image.fromarray(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    if side != size:
        region = region.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(region)


def _latent(crop: np.ndarray) -> torch.Tensor:
    """Downsample a crop by 2 (area): the "latent" a decoder up-samples back. (1, 3, S/2, S/2) in [0, 1]."""
    t = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 255.0
    return F.avg_pool2d(t, 2)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _nearest(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(F.interpolate(_latent(crop), scale_factor=2, mode="nearest"))


def _bilinear(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(F.interpolate(_latent(crop), scale_factor=2, mode="bilinear", align_corners=False))


def _transposed_conv(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A stride-2, 3x3 transposed convolution: uneven kernel overlap gives the classic checkerboard pattern.
    base = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    k = base + torch.from_numpy(rng.normal(0, 0.08, size=(3, 3))).float()
    weight = torch.zeros(3, 3, 3, 3)
    for c in range(3):
        weight[c, c] = k
    out = F.conv_transpose2d(_latent(crop), weight, stride=2, padding=1, output_padding=1)
    return _to_uint8(out / k.sum() * 4.0)


STANDIN_GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "standin_transposed_conv": _transposed_conv,
    "standin_nearest_upsample": _nearest,
    "standin_bilinear_upsample": _bilinear,
}


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def size_matched_pair(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    size: int,
    decode: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    candidates: int = 6,
) -> tuple[bytes, bytes]:
    """One (ai, nature) pair of PNGs whose file sizes match: the closest of `candidates` x `candidates`.

    Up-sampled stand-ins are smoother than photo crops, so they compress better: drawn independently, file size
    alone told the classes apart (`synapse7 audit`: 0.91 balanced accuracy). Choosing each pair among several
    draws of both classes (matched sampling) removes that shortcut without touching the pixels of either.
    """
    ai = [
        _png_bytes(decode(_random_crop(rng, photos[rng.integers(len(photos))], size), rng))
        for _ in range(candidates)
    ]
    nature = [
        _png_bytes(_random_crop(rng, photos[rng.integers(len(photos))], size)) for _ in range(candidates)
    ]
    gap = np.abs(np.log([[len(a)] for a in ai]) - np.log([len(n) for n in nature]))  # (ai, nature)
    i, j = np.unravel_index(int(np.argmin(gap)), gap.shape)
    return ai[i], nature[j]


def make_demo_dataset(
    root: str | Path, *, size: int = 64, n_train: int = 96, n_val: int = 32, seed: int = 0
) -> Path:
    """Write ROOT/<standin generator>/{train,val}/{ai,nature}/*.png; n_* images per class and generator, in
    pairs of matching file size (`size_matched_pair`)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = load_photos()
    for gen, decode in STANDIN_GENERATORS.items():
        for split, n in (("train", n_train), ("val", n_val)):
            dirs = {cls: root / gen / split / cls for cls in ("ai", "nature")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pair = size_matched_pair(rng, photos, size, decode)
                for (cls, d), data in zip(dirs.items(), pair, strict=True):
                    (d / f"{gen}_{split}_{cls}_{i:04d}.png").write_bytes(data)
    (root / "README.txt").write_text(
        "Synapse-7 demo data, made by `synapse7 demo`.\n"
        "nature: crops of photographs bundled with scikit-image.\n"
        "ai: STAND-INS, not real generator output: the same kind of crops passed through up-sampling decoders\n"
        "(transposed convolution, nearest-neighbour, bilinear) that imitate generator artefacts.\n"
        "Every image is a PNG, so the file format carries no label information, and images are drawn in pairs\n"
        "of matching file size, so neither does the size (`synapse7 audit` checks both).\n"
    )
    return root


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    data: str | Path | None = None,
    image_size: int | None = None,
    epochs: int = 3,
    backbone: str = "resnet34",
    weights: str = "none",
    input_mode: str = ModelConfig.input,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = True,
) -> dict:
    """Build (or use) a dataset, train, evaluate and predict a few images. Returns a summary dict."""

    t0 = time.time()
    out = ensure_writable_dir(out_dir)
    if data is None:
        data = out / "data"
        if not (data / "README.txt").exists():
            print(f"[demo] building the stand-in dataset in {data}", file=sys.stderr)
            make_demo_dataset(data)
        size = image_size or 64
        preprocess = "crop"  # demo images are already 64 px: no resampling to smear the artefacts
    else:
        size = image_size or 224
        preprocess = "resize"
    run = out / "run"
    cfg = load_config(
        data={
            "root": str(data),
            "image_size": size,
            "preprocess": preprocess,
            "batch_size": batch_size,
            "num_workers": num_workers,
        },
        model={"backbone": backbone, "weights": weights, "input": input_mode},
        train={"epochs": epochs, "lr": 1e-3},
    )
    resume = (run / "last.ckpt").exists() and not (run / "best.ckpt").exists()
    if (run / "best.ckpt").exists():
        print(f"[demo] reusing the finished run in {run}", file=sys.stderr)
    else:
        print(
            f"[demo] training {backbone} ({input_mode}, weights={weights}) for {epochs} epoch(s)",
            file=sys.stderr,
        )
        train(cfg, run, resume=resume, progress=progress)
    print("[demo] evaluating best.ckpt on the val split", file=sys.stderr)
    ev = evaluate(run / "best.ckpt", data, split="val", out_dir=out / "eval", num_workers=num_workers)
    det = Detector.from_checkpoint(run / "best.ckpt")
    files = []
    for gen_dir in sorted(p for p in Path(data).iterdir() if p.is_dir()):
        for cls in ("ai", "nature"):
            files += expand_paths([gen_dir / "val" / cls])[:1]
    print("[demo] predictions on a few val images:", file=sys.stderr)
    for p in det.predict(files):
        print(f"{p.path}\t{p.label}\t{p.p_ai:.4f}")
    summary = {
        "accuracy": ev.metrics["accuracy"],
        "roc_auc": ev.metrics["roc_auc"],
        "seconds": round(time.time() - t0, 1),
        "reports": str(out / "eval"),
        "checkpoint": str(run / "best.ckpt"),
    }
    print(json.dumps(summary, indent=2))
    return summary


def make_default_demo_images(
    root: str | Path, *, size: int = 256, seed: int = 0
) -> tuple[list[str], dict[str, str]]:
    """scikit-image's photographs (a seeded size x size crop of each), and one fake of each by every up-sampling
    chain of `synapse7 synthesize`.

    Returns the image paths and, for each, what it honestly is. Written under ROOT (photos/ and synth/).
    """
    from synapse7.synthesize import CHAIN_METHODS, PREFIX, SynthConfig, synthesize

    root = Path(root)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, img in load_named_photos().items():
        if not (photos / f"{name}.png").exists():
            Image.fromarray(img).save(photos / f"{name}.png")
    # val_fraction 0: every photo in "train"; the split means nothing here, nothing is trained.
    synthesize(
        photos,
        root / "synth",
        SynthConfig(methods=CHAIN_METHODS, size=size, val_fraction=0.0, seed=seed),
        log=lambda m: None,
    )
    files: list[str] = []
    truth: dict[str, str] = {}
    reals = sorted((root / "synth" / f"{PREFIX}{CHAIN_METHODS[0]}" / "train" / "nature").iterdir())
    for p in reals:  # the same photo is saved in every method's folder; show it once
        files.append(str(p))
        truth[str(p)] = f"REAL   photograph bundled with scikit-image ({p.stem})"
    for method in CHAIN_METHODS:
        for p in sorted((root / "synth" / f"{PREFIX}{method}" / "train" / "ai").iterdir()):
            files.append(str(p))
            truth[str(p)] = f"AI     self-made fake: {PREFIX}{method} of {p.stem} (not a real generator)"
    return files, truth


def run_default_demo(out_dir: str | Path = "demo_out", *, num_workers: int = 0) -> dict:
    """Run the shipped default model on images made here; print each verdict and where the card's figures come from."""
    from synapse7.modelfile import default_model_info

    t0 = time.time()
    out = ensure_writable_dir(out_dir)
    info = default_model_info()  # checks the hash first: a missing or altered model fails before any work
    print(f"[demo] default model {info['manifest_version']} ({info['path']})", file=sys.stderr)
    print(
        f"[demo] making images in {out / 'images'}: scikit-image photographs + synthesize's up-sampling chains",
        file=sys.stderr,
    )
    files, truth = make_default_demo_images(out / "images")
    det = Detector.default()
    right = {"AI": [0, 0], "REAL": [0, 0]}  # per true class: [correct, total]
    print(f"{'verdict':<6}  {'P(AI)':>6}  {'truth':<6} what the image is  [file]")
    for p in det.predict_paths(files, num_workers=num_workers):
        true = truth[p.path].split()[0]
        right[true][1] += 1
        right[true][0] += int(p.label == true)
        print(f"{p.label:<6}  {p.p_ai:6.3f}  {truth[p.path]}  [{p.path}]")
    card = info.get("card") or {}
    summary = {
        "real_correct": f"{right['REAL'][0]}/{right['REAL'][1]}",
        "fake_correct": f"{right['AI'][0]}/{right['AI'][1]}",
        "threshold": det.threshold,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(summary, indent=2))
    print(
        "These demo images show the model running; they are not a test set. The model card's figures (ROC-AUC "
        "and accuracy per shared test set, robustness, failure modes) come from: "
        + card.get("source", "(no model card recorded in the model's JSON)")
    )
    return summary
