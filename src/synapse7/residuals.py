"""Residuals that isolate generation traces: pure, batched tensor functions on any device.

Each takes a float batch (B, C, H, W) and returns a tensor of the same shape (odd sizes are handled), so
that any of them can be stacked with the image or its spectrum in `InputEncoder`.

- `npr_residual`: the neighbouring-pixel residual of NPR (Tan et al., CVPR 2024), x - up(down(x)) with
  nearest-neighbour sampling at factor 2. Up-sampling layers copy or interpolate each source pixel into a
  2x2 block, so the residual inside such blocks is what differs between decoded and captured images.
- `haar_hh`: the HH (diagonal) band of a one-level Haar DWT, as used by SAFE (Li et al., KDD 2025), taken
  undecimated (stride 1) so it keeps the input's size: (x[i,j] - x[i,j+1] - x[i+1,j] + x[i+1,j+1]) / 2.
- `srm_residual`: three fixed SRM high-pass filters of steganalysis (Fridrich & Kodovsky, 2012) applied
  to the luminance; the noise residual that camera pipelines and generators shape differently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x - nearest_up(nearest_down(x)) at factor 2. x: (B, C, H, W) -> (B, C, H, W).

    Down-sampling by 2 with nearest keeps the top-left pixel of every 2x2 block; up-sampling copies it back
    over the block, so the residual is 0 at even (row, col) and the difference to that pixel elsewhere.
    Odd trailing rows/columns are compared with the pixel of their own (truncated) block.
    """
    h, w = x.shape[-2:]
    anchor = x[..., ::2, ::2]  # nearest down-sampling by 2: (B, C, ceil(H/2), ceil(W/2))
    up = anchor.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return x - up


def haar_hh(x: torch.Tensor) -> torch.Tensor:
    """Undecimated Haar HH band. x: (B, C, H, W) -> (B, C, H, W); the last row/column is edge-replicated."""
    c = x.shape[1]
    kernel = x.new_tensor([[1.0, -1.0], [-1.0, 1.0]]).div(2).expand(c, 1, 2, 2)
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    return F.conv2d(padded, kernel, groups=c)


# The three SRM kernels used for image forensics (RGB-N, Zhou et al., CVPR 2018), normalised as there.
_SRM = (
    [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
    [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
    [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
)
_SRM_SCALE = (4.0, 12.0, 2.0)


def srm_kernels(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """The three SRM filters as a conv weight (3, 1, 5, 5)."""
    k = (
        torch.tensor(_SRM, dtype=dtype, device=device)
        / torch.tensor(_SRM_SCALE, dtype=dtype, device=device)[:, None, None]
    )
    return k[:, None]


def srm_residual(x: torch.Tensor) -> torch.Tensor:
    """Three SRM residuals of the channel mean. x: (B, C, H, W) -> (B, 3, H, W); reflect-padded borders."""
    lum = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    padded = F.pad(lum, (2, 2, 2, 2), mode="reflect" if min(x.shape[-2:]) > 2 else "replicate")
    return F.conv2d(padded, srm_kernels(x.dtype, x.device))


RESIDUALS = {"npr": npr_residual, "hh": haar_hh, "srm": srm_residual}
