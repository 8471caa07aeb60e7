"""Model files without pickle: weights as safetensors, the resolved config and threshold as JSON beside them.

Layout: `NAME.safetensors` + `NAME.json` (a model directory holds `model.safetensors` + `model.json`). The JSON
records the run config, the threshold (and how it was chosen), the file's SHA-256 and a training summary, so
the two files alone rebuild the network: no pickle is read, nothing is downloaded.

The shipped default model is `synapse7/weights/default.safetensors` + `default.json`; `weights/MANIFEST`
records its version and SHA-256, and `default_model_path()` refuses a file whose hash does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from synapse7.io import atomic_path, atomic_write_text, printable_path

FORMAT = "synapse7-safetensors"
FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "default"
# Environment variable pointing to another folder holding default.safetensors/.json/MANIFEST (tests, mirrors).
DEFAULT_DIR_ENV = "SYNAPSE7_DEFAULT_MODEL_DIR"


class ModelFileError(ValueError):
    """A model file is missing, unreadable, foreign, or fails its hash check."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_safetensors_model(path: str | os.PathLike) -> bool:
    """Whether `path` names a safetensors model (a .safetensors file or a folder holding model.safetensors)."""
    p = Path(path)
    return p.suffix == ".safetensors" or (p.is_dir() and (p / "model.safetensors").is_file())


def model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) for a .safetensors file, a .json beside it, or a model folder (new or existing)."""
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":  # a folder
        p = p / "model.safetensors"
    return p, p.with_suffix(".json")


def save_model(
    state: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    out: str | os.PathLike,
    *,
    threshold: float = 0.5,
    dtype: str = "fp32",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a Synapse7Net state_dict and its config as NAME.safetensors + NAME.json; returns the weights path.

    Floating-point tensors are stored in `dtype` (fp16 halves the file; loading casts them back to fp32);
    integer buffers (BatchNorm's batch counters) keep theirs. `extra` goes into the JSON (calibration,
    training summary, model version).
    """
    from safetensors.torch import save_file

    from synapse7 import __version__

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    weights, meta_path = model_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # clone + contiguous: safetensors refuses tensors that share storage or are views.
    tensors = {
        k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
        for k, v in state.items()
    }
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "synapse7_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "dtype": dtype,
        "threshold": float(threshold),
        "config": config,
        **(extra or {}),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return weights


def read_model_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON of a safetensors model; missing, unparsable or foreign files raise ModelFileError naming it."""
    weights, meta_path = model_paths(path)
    for f in (weights, meta_path):
        if not f.is_file():
            raise ModelFileError(
                f"model file not found: {printable_path(f)} (a safetensors model is "
                "NAME.safetensors with NAME.json beside it, or a folder with model.safetensors/.json)"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"cannot read model config {printable_path(meta_path)}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise ModelFileError(
            f"{printable_path(meta_path)} is not a Synapse-7 model config (format {FORMAT!r})"
        )
    return meta


def load_model_file(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """A safetensors model as a checkpoint-like dict {"state_dict", "hyper_parameters", "synapse7", "model_json"}.

    The state_dict's keys carry the `net.` prefix of Lightning checkpoints, so every loader serves both kinds.
    verify=True checks the weights' SHA-256 against the JSON's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = model_paths(path)
    meta = read_model_json(path)
    if verify and meta.get("sha256") and sha256_file(weights) != meta["sha256"]:
        raise ModelFileError(
            f"{printable_path(weights)} does not match the SHA-256 in {printable_path(meta_path)} "
            "(corrupt or replaced file)"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"cannot read weights {printable_path(weights)}: {e}") from e
    # Back to fp32: the network computes in fp32 (autocast handles reduced precision where asked).
    state = {f"net.{k}": (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    synapse7 = {"threshold": float(meta.get("threshold", 0.5)), "format": 1}
    for key in ("calibration", "scaling"):  # scaling: calibrate's temperature/offset on the logit
        if meta.get(key) is not None:
            synapse7[key] = meta[key]
    return {
        "state_dict": state,
        "hyper_parameters": {"config": meta["config"]},
        "synapse7": synapse7,
        "model_json": meta,
    }


def export_checkpoint(
    ckpt: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    dtype: str = "fp32",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Export a loaded checkpoint dict (`predict.load_checkpoint`) as safetensors + JSON."""
    from synapse7.model import net_state_dict

    meta = dict(ckpt.get("synapse7") or {})
    info: dict[str, Any] = {}
    for key in ("calibration", "scaling"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    training = dict((ckpt.get("model_json") or {}).get("training") or {})
    for key in ("epoch", "global_step"):  # what a Lightning checkpoint knows about its training
        if key in ckpt:
            training[key] = int(ckpt[key])
    if training:
        info["training"] = training
    info.update(extra or {})
    return save_model(
        net_state_dict(ckpt["state_dict"]),
        ckpt["hyper_parameters"]["config"],
        out,
        threshold=float(meta.get("threshold", 0.5)),
        dtype=dtype,
        extra=info,
    )


def update_model_json(path: str | os.PathLike, out: str | os.PathLike | None = None, **fields: Any) -> Path:
    """Set `fields` in a safetensors model's JSON, in place or into a copy at `out` (weights copied too)."""
    import shutil

    weights, meta_path = model_paths(path)
    meta = read_model_json(path)
    meta.update(fields)
    if out is not None:
        new_weights, meta_path = model_paths(out)
        if new_weights.resolve() != weights.resolve():
            new_weights.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, new_weights)
            meta["weights"] = new_weights.name
        weights = new_weights
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return weights


# ----------------------------------------------------------------------------------------------------------
# The shipped default model.


def default_model_dir() -> Path:
    return Path(os.environ.get(DEFAULT_DIR_ENV) or WEIGHTS_DIR)


def read_manifest(folder: Path) -> dict[str, dict[str, str]]:
    """weights/MANIFEST: lines `FILE SHA256 VERSION` ('#' starts a comment) -> {FILE: {sha256, version}}."""
    path = folder / "MANIFEST"
    if not path.is_file():
        raise ModelFileError(f"the default model's manifest is missing: {printable_path(path)}")
    out: dict[str, dict[str, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ModelFileError(f"{printable_path(path)}:{n}: expected 'FILE SHA256 VERSION', got {line!r}")
        out[parts[0]] = {"sha256": parts[1].lower(), "version": parts[2]}
    return out


def write_manifest(folder: Path, weights: Path, version: str) -> Path:
    """Record `weights`' SHA-256 and `version` in folder/MANIFEST (written by bench/release.py)."""
    text = (
        "# The shipped default model: FILE SHA256 VERSION. Written by bench/release.py; the loader checks it.\n"
        f"{weights.name} {sha256_file(weights)} {version}\n"
    )
    atomic_write_text(folder / "MANIFEST", text)
    return folder / "MANIFEST"


def default_model_path(*, verify: bool = True) -> Path:
    """The shipped default model's weights, after checking its SHA-256 against MANIFEST and its JSON.

    A missing file or a hash mismatch raises ModelFileError saying what to do.
    """
    folder = default_model_dir()
    weights = folder / f"{DEFAULT_NAME}.safetensors"
    if not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise ModelFileError(
            f"the default model is missing: {printable_path(weights)} (and {DEFAULT_NAME}.json). It is built by "
            "`python bench/release.py`; meanwhile pass --checkpoint CKPT or a .safetensors model"
        )
    if verify:
        entry = read_manifest(folder).get(weights.name)
        if entry is None:
            raise ModelFileError(f"{printable_path(folder / 'MANIFEST')} has no entry for {weights.name}")
        meta = read_model_json(weights)
        got = sha256_file(weights)
        if got != entry["sha256"] or meta.get("sha256") != entry["sha256"]:
            raise ModelFileError(
                f"{printable_path(weights)}: SHA-256 {got} does not match MANIFEST "
                f"({entry['sha256']}); the file is corrupt or was replaced. Reinstall synapse7"
            )
    return weights


def default_model_info() -> dict[str, Any]:
    """The default model's JSON plus its MANIFEST version (the hash is verified)."""
    weights = default_model_path()
    meta = read_model_json(weights)
    meta["manifest_version"] = read_manifest(weights.parent)[weights.name]["version"]
    meta["path"] = str(weights)
    return meta


def model_summary(meta: dict[str, Any]) -> str:
    """The text `synapse7 info` prints: identity, recipe, threshold and the model card's figures with their source."""
    cfg = meta.get("config", {})
    m, d = cfg.get("model", {}), cfg.get("data", {})
    card = meta.get("card") or {}
    lines = [
        f"Synapse-7 default model {meta.get('manifest_version') or meta.get('model_version', '?')}"
        f" (synapse7 {meta.get('synapse7_version', '?')}, {meta.get('dtype', '?')} weights, "
        f"{meta.get('bytes', 0) / 2**20:.1f} MiB)",
        f"  file: {meta.get('path', meta.get('weights', '?'))}",
        f"  sha256: {meta.get('sha256', '?')}",
        f"  network: {m.get('backbone')} input={m.get('input')} preprocess={d.get('preprocess')} "
        f"image_size={d.get('image_size')} crops={d.get('crops')} align={d.get('align')}",
        f"  threshold: P(AI) >= {float(meta.get('threshold', 0.5)):.4f}"
        + (f" ({card['threshold_note']})" if card.get("threshold_note") else ""),
    ]
    if card.get("summary"):
        lines += ["", card["summary"]]
    rows = card.get("figures") or []
    if rows:
        lines += ["", f"  {'set':<40} {'n':>6} {'ROC-AUC':>8} {'acc':>6} {'real':>6} {'fake':>6}"]
        for r in rows:
            lines.append(
                f"  {r['set']:<40} {r['n']:>6} {_num(r.get('roc_auc')):>8} {_num(r.get('accuracy')):>6} "
                f"{_num(r.get('real_accuracy')):>6} {_num(r.get('fake_accuracy')):>6}"
                + ("  (never trained on)" if r.get("held_out") else "")
            )
    lines += [
        "",
        "Where the figures come from: "
        + card.get("source", "no figures are recorded for this model (no model card in its JSON)"),
    ]
    if card.get("misses"):
        lines += ["What it will miss: " + card["misses"]]
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"
