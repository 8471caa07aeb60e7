"""Batched JPEG decoding on the model's device (`predict --gpu-decode`): nvJPEG through torchvision on a GPU.

DataLoader workers only read files: a JPEG that a plain decoder can take (8-bit RGB or greyscale, a complete
stream, within the pixel limit, at least as large as the model needs) travels as its encoded bytes; every other
file (PNG, CMYK JPEG, truncated or odd streams, images smaller than the crop in "crop" mode) goes through the
usual CPU path (`ClassificationPreset.load`) in the worker, so nothing is lost and bad files keep their usual
error. The main process decodes the batch's JPEGs in one `torchvision.io.decode_jpeg(list, device=...)` call,
applies the EXIF orientation, and runs the preset's own geometry (aspect limit, antialiased resize, centre crop
or grid crops) on the device. A JPEG the batched decoder refuses is decoded again alone, then on the CPU path.

The pixels need not be bit-identical to the CPU path's: nvJPEG's IDCT and chroma upsampling are its own, and on
a GPU the resize runs in float instead of torchvision's uint8 CPU kernel (tests/test_gpudecode.py bounds the
difference of the same code on the CPU; docs/performance.md gives what it changed in P(AI) on the H200).
Presets with PIL operations (`--align`, perturbations) are defined on the decoded PIL image and take the CPU
path for every file.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from synapse7.io import MAX_JPEG_SCANS, BadImageError, _jpeg_scans
from synapse7.transforms import (
    RESIZE_INTERPOLATIONS,
    ClassificationPreset,
    grid_crops,
    grid_side,
    limit_aspect,
)

EXIF_ORIENTATION = 0x0112
MAX_JPEG_BYTES = 256 * 2**20  # larger files take the CPU path (which reads the header before the pixels)


@dataclass(frozen=True)
class JpegProbe:
    width: int
    height: int
    orientation: int  # EXIF orientation 1..8 (1: none)


def probe_jpeg(
    path: str | os.PathLike, *, max_pixels: int, min_side: int = 0
) -> tuple[JpegProbe, bytes] | None:
    """(header facts, file bytes) for a JPEG the batched decoder can take; None sends the file to the CPU path.

    None on any doubt: not a JPEG, CMYK/YCCK or 12-bit, no end-of-image marker (truncated, or data after it),
    more scans than `io.MAX_JPEG_SCANS`, over `max_pixels`, a shorter side under `min_side`, or any error; the CPU
    path then decodes the file or gives its usual error.
    """
    try:
        st = os.stat(path)
        # a FIFO or device would block or never end; an oversized file is the CPU path's to refuse
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_JPEG_BYTES:
            return None
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return None
        with Image.open(BytesIO(data), formats=("JPEG",)) as img:
            w, h = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or getattr(img, "bits", 8) != 8:
                return None
            if w * h > max_pixels or min(w, h) < max(1, min_side):
                return None
            if _jpeg_scans(img.fp, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
                return None
            try:
                orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - broken EXIF: the CPU path ignores it too
                orientation = 1
        return JpegProbe(w, h, orientation if 1 <= orientation <= 8 else 1), data
    except Exception:  # noqa: BLE001 - any doubt: the CPU path decides, with its own error message
        return None


def apply_orientation(t: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as displayed, for EXIF orientation 1..8 (what PIL's ImageOps.exif_transpose does)."""
    if orientation == 2:
        return t.flip(-1)
    if orientation == 3:
        return t.flip(-2, -1)
    if orientation == 4:
        return t.flip(-2)
    if orientation == 5:
        return t.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(t, -1, dims=(-2, -1))
    if orientation == 7:
        return t.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(t, 1, dims=(-2, -1))
    return t


# One main thread's batched nvJPEG decode against one DataLoader worker's PIL decode, per image: 2,615 against
# 3,157 / 14 = 225 img/s for 500x375 JPEGs on the lent H200 machine (docs/performance.md, GPU), so one GPU
# decoder does the work of about 11.6 workers.
GPU_DECODER_WORKERS = 11.6


def default_gpu_share(num_workers: int) -> float:
    """The share of JPEGs to decode on the GPU so that the GPU decoder (the main thread) and the CPU workers
    finish together: all of them without workers, about 45% with 14."""
    return GPU_DECODER_WORKERS / (GPU_DECODER_WORKERS + max(0, num_workers))


def goes_to_gpu(index: int, share: float) -> bool:
    """A deterministic, evenly spread choice of `share` of the dataset indices (golden-ratio sequence)."""
    return (index * 0.6180339887498949) % 1.0 < share


class EncodedFileDataset(Dataset):
    """Files -> {"index", "jpeg": bytes tensor, "orientation"} for batched decoding, or the CPU path's
    {"index", "image": uint8 crop} / {"index", "bad": reason}.

    `gpu_share` of the files (chosen by index) are offered to the batched decoder; the workers decode the others
    on the CPU while the GPU decodes, so that both kinds of decoder are busy (`default_gpu_share`)."""

    def __init__(
        self, paths: list[str], preset: ClassificationPreset, *, max_pixels: int, gpu_share: float = 1.0
    ) -> None:
        if not 0.0 <= gpu_share <= 1.0:
            raise ValueError(f"gpu_share must be in [0, 1], got {gpu_share}")
        self.paths, self.preset, self.max_pixels, self.gpu_share = list(paths), preset, max_pixels, gpu_share
        # Presets with PIL ops are defined on the PIL image; "crop" pads small images (the CPU path does that).
        self.device_geometry = not preset.pre_ops
        self.min_side = max(preset.min_side, preset.crop_size if preset.preprocess == "crop" else 0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        probe = (
            probe_jpeg(path, max_pixels=self.max_pixels, min_side=self.min_side)
            if self.device_geometry and goes_to_gpu(i, self.gpu_share)
            else None
        )
        if probe is not None:
            info, data = probe
            return {
                "index": i,
                "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                "orientation": info.orientation,
            }
        try:
            return {"index": i, "image": self.preset.load(path, max_pixels=self.max_pixels)}
        except BadImageError as e:
            return {"index": i, "bad": e.reason}


def collate_encoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """JPEG items stay a list (their byte strings differ in length); the CPU path's crops are stacked here, in
    the worker, so that the main process copies them to the device in one (pinned, asynchronous) transfer."""
    cpu = [it for it in items if "image" in it]
    return {
        "items": [it for it in items if "image" not in it],
        "cpu_index": [it["index"] for it in cpu],
        "cpu_images": torch.stack([it["image"] for it in cpu]) if cpu else None,
    }


class BatchDecoder:
    """A batch of `EncodedFileDataset` items -> (uint8 crops on `device`, their dataset indices, {index: reason}).

    JPEGs are decoded together by `decode_jpeg(..., device=device)`; the geometry is the preset's, run on the
    device, images of one size resized together. `paths` (dataset order) lets a JPEG that the batched decoder
    refuses be decoded again on the CPU path, with its usual error if that fails too.
    """

    def __init__(
        self, preset: ClassificationPreset, device: torch.device, paths: list[str], *, max_pixels: int
    ):
        self.preset, self.device, self.paths, self.max_pixels = (
            preset,
            torch.device(device),
            paths,
            max_pixels,
        )
        self.k = grid_side(preset.crops)

    def decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 images on the device; None where a JPEG could not be decoded."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 deprecates its decoders for TorchCodec
            try:
                out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
                return list(out)  # ImageReadMode.RGB: always 3 channels, greyscale expanded
            except RuntimeError:  # one bad stream fails the whole call: find it
                single: list[torch.Tensor | None] = []
                for d in datas:
                    try:
                        single.append(decode_jpeg([d], mode=ImageReadMode.RGB, device=self.device)[0])
                    except RuntimeError:
                        single.append(None)
                return single

    def geometry(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The preset's `to_uint8` geometry on decoded images (same-size images resized in one call)."""
        p = self.preset
        images = [limit_aspect(t) for t in images]
        if p.preprocess == "resize":
            mode = RESIZE_INTERPOLATIONS[p.interpolation]
            groups: dict[tuple[int, int], list[int]] = {}
            for j, t in enumerate(images):
                groups.setdefault(tuple(t.shape[-2:]), []).append(j)
            resized: list[torch.Tensor] = [torch.empty(0)] * len(images)
            for members in groups.values():
                batch = torch.stack([images[j] for j in members])
                batch = F.resize(batch, [p.resize_size], interpolation=mode, antialias=True)
                for j, r in zip(members, batch, strict=True):
                    resized[j] = r
            images = resized
        if self.k > 1:
            return [grid_crops(t, p.crop_size, self.k) for t in images]
        return [F.center_crop(t, [p.crop_size, p.crop_size]) for t in images]

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, list[int], dict[int, str]]:
        items = batch["items"]
        jpegs = [it for it in items if "jpeg" in it]
        crops: dict[int, torch.Tensor] = {}
        bad: dict[int, str] = {it["index"]: it["bad"] for it in items if "bad" in it}
        if batch["cpu_images"] is not None:  # one copy: a pageable copy per image would wait for the device
            on_device = batch["cpu_images"].to(self.device, non_blocking=True)
            crops.update(zip(batch["cpu_index"], on_device, strict=True))
        if jpegs:
            decoded = self.decode([it["jpeg"] for it in jpegs])
            ok = [(it, t) for it, t in zip(jpegs, decoded, strict=True) if t is not None]
            for it, t in zip(jpegs, decoded, strict=True):
                if t is None:  # refused by the batched decoder: the CPU path decodes it or names the problem
                    try:
                        crops[it["index"]] = self.preset.load(
                            self.paths[it["index"]], max_pixels=self.max_pixels
                        ).to(self.device)
                    except BadImageError as e:
                        bad[it["index"]] = e.reason
            shaped = self.geometry([apply_orientation(t, it["orientation"]) for it, t in ok])
            for (it, _), c in zip(ok, shaped, strict=True):
                crops[it["index"]] = c
        order = sorted(crops)
        return (torch.stack([crops[i] for i in order]) if order else None), order, bad
