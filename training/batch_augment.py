"""The MoCo-v2 / SimSiam recipes on whole uint8 batches, with per-sample random parameters.

Same distributions as the per-image recipes in ``augment.py`` (torchvision's RandomResizedCrop sampler,
ColorJitter factors in a random order per image, grayscale, blur, flip), run as a few batched tensor ops
instead of one PIL pipeline per image: crop + resize is one ``torchvision.ops.roi_align`` call (bilinear,
averaging several samples per output pixel when it shrinks), the colour ops are torchvision's functional
ops where a batch shares a factor and broadcasting arithmetic where each image draws its own.
Batched per-sample colour jitter is not in torchvision; kornia has it, but was not worth a dependency
for these ~60 lines (its crop sampler also differs from torchvision's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from semipairs.views import stats_for


@dataclass(frozen=True)
class BatchRecipe:
    """MoCo-v2's recipe (SimSiam uses the same one); blur only above 64 px, as in ``augment.moco_v2``."""

    size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    p_flip: float = 0.5

    @property
    def blur(self) -> bool:
        return self.size > 64

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (B, 3, H, W) -> normalised float32 (B, 3, size, size) views."""
        x = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 and images.shape[1] != 3 else images
        b, _, h, w = x.shape
        g = generator
        boxes = crop_boxes(b, h, w, self.scale, self.ratio, g)
        jit, gray = torch.rand(b, generator=g) < self.p_jitter, torch.rand(b, generator=g) < self.p_gray
        blur, sigma = torch.rand(b, generator=g) < self.p_blur, torch.empty(b).uniform_(*self.sigma, generator=g)
        flip = torch.rand(b, generator=g) < self.p_flip
        x = resized_crop(x.float().div_(255), boxes, self.size, flip)  # flip commutes with the colour ops and blur
        x = color_jitter(x, jit, *self.jitter, generator=g)
        if gray.any():
            x[gray] = TF.rgb_to_grayscale(x[gray], num_output_channels=3)
        if self.blur and blur.any():
            x[blur] = gaussian_blur(x[blur], sigma[blur], 2 * (self.size // 20) + 1)
        mean, std = stats_for(self.size)
        return TF.normalize(x, list(mean), list(std))


def crop_boxes(b: int, h: int, w: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), generator=None, tries: int = 10) -> torch.Tensor:
    """(B, 4) boxes x0, y0, x1, y1 drawn as torchvision's ``RandomResizedCrop.get_params`` draws them:
    up to ``tries`` (area, log-aspect) draws per image, the first that fits wins, else a centre crop."""
    area = h * w
    target = area * torch.empty(b, tries).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    cw, ch = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.float().argmax(1)
    rows = torch.arange(b)
    cw, ch, found = cw[rows, first], ch[rows, first], fits.any(1)
    # fallback: the centre crop torchvision takes after 10 misses (aspect clamped into ratio)
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(h * max(ratio)), h
    else:
        fw, fh = w, h
    cw, ch = torch.where(found, cw, torch.tensor(float(fw))), torch.where(found, ch, torch.tensor(float(fh)))
    u = torch.rand(b, 2, generator=generator)
    y0 = torch.where(found, torch.floor(u[:, 0] * (h - ch + 1)), torch.tensor(float((h - fh) // 2)))
    x0 = torch.where(found, torch.floor(u[:, 1] * (w - cw + 1)), torch.tensor(float((w - fw) // 2)))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box, resize to size x size (bilinear) and mirror it where ``flip``.

    Boxes no larger than the output (always so on a decoded cache stored at the training size) are one
    ``grid_sample`` whose grid samples where torchvision's bilinear resize of the cropped image samples
    (half-pixel centres, clamped inside the crop) and also does the flip; a box that shrinks goes through
    ``roi_align``, which averages several samples per output pixel (anti-aliasing), then flips.
    """
    b, _, h, w = x.shape
    flip = torch.zeros(b, dtype=torch.bool) if flip is None else flip
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(1)
    if float((x1 - x0).max()) <= size and float((y1 - y0).max()) <= size:
        centres = (torch.arange(size, dtype=x.dtype) + 0.5) / size
        gx = (x0[:, None] + centres * (x1 - x0)[:, None] - 0.5).clamp(min=x0[:, None], max=(x1 - 1)[:, None])
        gy = (y0[:, None] + centres * (y1 - y0)[:, None] - 0.5).clamp(min=y0[:, None], max=(y1 - 1)[:, None])
        gx = torch.where(flip[:, None], gx.flip(1), gx)
        grid = torch.stack(torch.broadcast_tensors(((2 * gx + 1) / w - 1)[:, None, :], ((2 * gy + 1) / h - 1)[:, :, None]), -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rois = torch.cat([torch.arange(b, dtype=x.dtype)[:, None], boxes.to(x.dtype)], 1)
    out = roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True).clamp_(0, 1)
    out[flip] = out[flip].flip(-1)
    return out


def _gray(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x, num_output_channels=1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, per image) through HSV, as torchvision's adjust_hue."""
    v, _ = x.max(1, keepdim=True)
    c = v - x.min(1, keepdim=True)[0]  # chroma
    r, g, b = x.unbind(1)
    safe = torch.where(c == 0, torch.ones_like(c), c).squeeze(1)
    h = torch.where(v.squeeze(1) == r, (g - b) / safe, torch.where(v.squeeze(1) == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(c.squeeze(1) == 0, torch.zeros_like(h), h)
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0).unsqueeze(1)  # hue in [0, 6)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + h6, 6.0)
    return v - c * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def color_jitter(x: torch.Tensor, apply: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """ColorJitter with each image's own factors and own order of the four ops, on the images where ``apply``."""
    b = len(x)
    factor = lambda lo, hi: torch.empty(b, 1, 1, 1).uniform_(lo, hi, generator=generator)  # noqa: E731
    fb, fc, fs = (factor(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation))
    fh = factor(-hue, hue)
    orders = torch.argsort(torch.rand(b, 4, generator=generator), dim=1)  # a uniform random permutation per image
    ops = {
        0: lambda y, idx: (y * fb[idx]).clamp_(0, 1),
        1: lambda y, idx: _blend(y, _gray(y).mean((-3, -2, -1), keepdim=True), fc[idx]),
        2: lambda y, idx: _blend(y, _gray(y), fs[idx]),
        3: lambda y, idx: _hue(y, fh[idx].view(-1)),
    }
    out = x
    sel = apply.nonzero().view(-1)
    for pos in range(4):
        for op in range(4):
            idx = sel[orders[sel, pos] == op]
            if len(idx):
                out[idx] = ops[op](out[idx], idx)
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (reflect padding, as torchvision)."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = torch.nn.functional.pad(x.reshape(1, b * c, h, w), [kernel_size // 2] * 4, mode="reflect")
    y = torch.nn.functional.conv2d(y, k[:, None, None, :], groups=b * c)
    y = torch.nn.functional.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.view(b, c, h, w)
