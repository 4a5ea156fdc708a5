"""Frozen image features for the offline model's image pathway: k vectors of width 1280 per image.

`ImageFeatures.encode(images)` turns each image into `FeatureSpec.tokens_per_image` vectors that
a trainable projector maps into the language model's embedding space, LLaVA-style, in this order:

1. `grid * grid` spatial tokens, row-major from the top-left: EfficientNet-Lite0's last conv
   feature map (`extract_features`: conv head + BN + ReLU6, before global pooling; 1280
   channels, 7 x 7 for the 224 px input) adaptive-average-pooled to `grid x grid`. They say
   *where* things are, which the pooled feature averages away.
2. One pooled token: the global average of that map, `ImageNetClassifier.features`.
3. One colour token: low-level colour statistics of the same 224 px centre crop the network
   sees, zero-padded to 1280. Deep ImageNet features are trained to ignore colour (a red and a
   blue mug are both "coffee mug"), so colour questions need it from the pixels.

The deep tokens (grid and pooled) are the network's own activations divided by
`FeatureSpec.deep_divisor` (4), so the pooled token is the classifier's features, scaled. The
colour token is a concatenation of blocks each bounded near unit norm (see `colour_tokens`),
then multiplied by `COLOUR_SCALE`; each grid token also carries its cell's colour
(`cell_colours`). With `FeatureSpec.occupancy` (the default) both also say how much of each
cell is coloured, which count questions need (measured with the bench, 3 x 3 grid, 120
held-out questions: count exact match 0.57 -> 0.63 at step 300 and 0.53 -> 0.70 at step
400; all skills 0.89 -> 0.88 and 0.88 -> 0.92).

What the projector must read has to be loud enough to learn from in a few hundred steps:
undivided, a grid token's 1280 deep entries (norm ~18 on shapes pictures) drowned its cell's
colour (~6), and hue histograms taken as fractions of *all* pixels made a
small shape's colour a whisper beside the background. Measured on the shapes mix (colour
questions only, 50 steps of 8, 60 held-out questions): colour exact match 0.07 with the hue
as a share of all pixels, 1.00 with it as a share of the chromatic pixels.

Each distinct image (content hash) is computed once and kept in an LRU cache, as the label
pathway does, because every chat turn re-sends the history's images. Measured on this 2-core
CPU (2 torch threads, shared with other work, so indicative): about 26 images/s for a batch of
32 (1.23 s, of which `classifier.features` alone takes 1.12 s); a cached image costs ~0.2 ms.

It does not project, splice or train anything, and it does not download: the weights are the
classifier's (`mmchat.vision.imagenet`).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from mmchat.errors import ConfigError
from mmchat.vision.imagenet import DEFAULT_CACHE_DIR, FEATURE_DIM, MEAN, STD, ImageNetClassifier, shared_classifier

# EfficientNet-Lite0's last feature map is 7 x 7 for a 224 px input (stride 32); a finer grid
# would only repeat cells.
MAX_GRID = 7
# Chosen so the colour token's norm lands in the deep tokens' range (see the module docstring).
COLOUR_SCALE = 6.0
# Pixels at least this saturated and this bright count towards the hue histogram; below them
# hue is noise (greys, near-black), and the RGB histogram describes those pixels instead.
MIN_SATURATION = 0.25
MIN_VALUE = 0.2
# The hue histograms are fractions of the chromatic pixels, not of all pixels: a small red
# triangle on a white page then says "red" as loudly as a red wall. Below these floors (of the
# picture, of a cell) the histogram is scaled down instead, so a few stray chromatic pixels in
# a grey photo or a cell's edge stay quiet. A triangle of the shapes dataset's smallest size
# covers ~0.4% of the picture.
MIN_CHROMATIC_SHARE = 0.002
MIN_CELL_CHROMATIC_SHARE = 0.02
BATCH_SIZE = 32
# What a card's feature_spec without these fields meant when it was written (see `FeatureSpec.from_card`).
CARD_DEFAULTS = {"grid": 4, "occupancy": 0}


@dataclass(frozen=True)
class FeatureSpec:
    """What `ImageFeatures` yields per image; frozen so it can key caches and be saved in cards."""

    # 3 x 3 cells are the thirds position questions are asked in ("left", "top", "center"), and
    # a step's cost is nearly flat in tokens per picture at these sizes. Measured with the
    # bench (held-out exact match, 120 questions): a 4 x 4 grid 0.82 at 350 steps (9.7 min,
    # position 0.67); 6 x 6 0.84 at 275 (9.4 min); 3 x 3 0.89 at 300 (8.4 min, position 1.00).
    grid: int = 3
    colour_bins: int = 4  # per RGB channel: a colour_bins ** 3 joint histogram
    # Six soft bins centred on red, yellow, green, cyan, blue and magenta: orange or purple
    # split between two neighbours, and a shade a few degrees off a primary stays near it.
    hue_bins: int = 6  # 0 leaves the hue histogram out
    # Each grid token also carries its own cell's colour (see `cell_colours`): a hue histogram
    # of this many bins and the cell's mean RGB. 0 leaves the grid tokens deep features only.
    cell_hue_bins: int = 6
    # 1: each grid token also carries how much of its cell is coloured (its chromatic share),
    # and the colour token the whole grid's shares (an occupancy map). The hue histograms are
    # shares *of* the chromatic pixels, so without this a cell half covered by a red circle
    # and one clipped by its edge look alike, and count has to be read from deep features.
    # 0 leaves them out (the features of adapters trained before this field existed).
    occupancy: int = 1
    # The grid and pooled tokens are the network's activations divided by this. At full size
    # their 1280 entries outweigh the colour entries the projector must also read (a grid
    # token's norm is ~18, its cell's colour ~6): measured, 100 steps of the shapes mix, 80
    # held-out questions, colour exact match 0.15 undivided and 0.45 divided by 4.
    deep_divisor: int = 4

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("grid", self.grid, 1, MAX_GRID),
            ("colour_bins", self.colour_bins, 2, 8),
            ("hue_bins", self.hue_bins, 0, 36),
            ("cell_hue_bins", self.cell_hue_bins, 0, 36),
            ("occupancy", self.occupancy, 0, 1),
            ("deep_divisor", self.deep_divisor, 1, 64),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"image feature {name} must be a whole number from {low} to {high}; got {value!r}")

    @classmethod
    def from_card(cls, fields: dict) -> "FeatureSpec":
        """The spec an adapter card's `projector.feature_spec` records. Cards record every field
        (`dataclasses.asdict`); a field one lacks was written before it existed or before its
        default changed, and takes the value it had then (`CARD_DEFAULTS`), so an older adapter
        reads the features it was trained on."""
        return cls(**{**CARD_DEFAULTS, **fields})

    @property
    def tokens_per_image(self) -> int:
        """k: the grid cells, the pooled token and the colour token."""
        return self.grid * self.grid + 2

    @property
    def cell_colour_width(self) -> int:
        """How many entries each grid token carries after its 1280 deep ones (its cell's colour)."""
        return 3 + self.cell_hue_bins + self.occupancy if self.cell_hue_bins else 0

    @property
    def token_dim(self) -> int:
        """The width of every token: the deep features' 1280, then the cell-colour entries
        (zero in the pooled and colour tokens)."""
        return FEATURE_DIM + self.cell_colour_width

    @property
    def pooled_index(self) -> int:
        return self.grid * self.grid

    @property
    def colour_index(self) -> int:
        return self.grid * self.grid + 1

    @property
    def colour_layout(self) -> dict[str, slice]:
        """Where each block of the colour token lies (see `colour_tokens`), in order."""
        sizes = {"mean": 3, "std": 3, "rgb_histogram": self.colour_bins**3, "hue_histogram": self.hue_bins,
                 "cells": 3 * self.grid * self.grid, "occupancy": self.occupancy * self.grid * self.grid}
        layout, start = {}, 0
        for name, size in sizes.items():
            layout[name] = slice(start, start + size)
            start += size
        return layout

    @property
    def colour_width(self) -> int:
        """How many leading entries of the colour token carry values (the rest are zero)."""
        return self.colour_layout["occupancy"].stop


def _soft_bins(position: torch.Tensor, bins: int, circular: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower bin, upper bin, upper weight) splitting each value between its two nearest bin centres.

    `position` is in bin units with bin centres at whole numbers. Hard bins would put two
    nearly equal shades on either side of an edge as far apart as red from blue; shared weights
    make the histogram change smoothly with the colour.
    """
    if circular:
        lower = torch.floor(position)
        return lower.long() % bins, (lower.long() + 1) % bins, position - lower
    position = position.clamp(0, bins - 1)
    lower = torch.floor(position).clamp(max=bins - 2)
    return lower.long(), lower.long() + 1, position - lower


def _histograms(index: torch.Tensor, weight: torch.Tensor, bins: int) -> torch.Tensor:
    """`(n, bins)` per-image sums of `weight` by bin `index` (both `(n, pixels)`), in one bincount."""
    n = index.shape[0]
    offset = (torch.arange(n, device=index.device) * bins)[:, None]
    counts = torch.bincount((index + offset).flatten(), weights=weight.flatten(), minlength=n * bins)
    return counts.view(n, bins)


def _rgb_histogram(pixels: torch.Tensor, bins: int) -> torch.Tensor:
    """`(n, bins ** 3)` soft joint RGB histogram of `(n, 3, p)` pixels in 0..1, as pixel fractions."""
    low, high, upper = _soft_bins(pixels * bins - 0.5, bins, circular=False)
    total = torch.zeros(pixels.shape[0], bins**3, device=pixels.device)
    for corner in range(8):  # the 2 x 2 x 2 neighbouring bin centres of each pixel's colour
        index = torch.zeros_like(low[:, 0])
        weight = torch.ones_like(upper[:, 0])
        for channel in range(3):
            take_high = (corner >> channel) & 1
            index = index * bins + (high if take_high else low)[:, channel]
            weight = weight * (upper if take_high else 1 - upper)[:, channel]
        total += _histograms(index, weight, bins**3)
    return total / pixels.shape[2]


def _hue(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hue in 0..1 with red at 0, 1.0 where the pixel is chromatic else 0.0) of `(n, 3, p)` pixels in 0..1."""
    r, g, b = pixels.unbind(1)
    value = pixels.max(1).values
    delta = value - pixels.min(1).values
    safe = delta.clamp_min(1e-6)
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    ) / 6
    chromatic = ((delta >= MIN_SATURATION * value) & (value >= MIN_VALUE) & (delta > 0)).float()
    return hue, chromatic


def _hue_counts(pixels: torch.Tensor, bins: int, groups: torch.Tensor | None = None, n_groups: int = 1) -> torch.Tensor:
    """`(n, n_groups, bins)` soft hue histogram counts of the chromatic pixels of `(n, 3, p)` pixels,
    per group when `groups` (`(p,)` group of each pixel) is given; bins are centred on pure red,
    and on green and blue when bins % 3 == 0."""
    hue, chromatic = _hue(pixels)
    low, high, upper = _soft_bins(hue * bins, bins, circular=True)
    offset = groups[None, :] * bins if groups is not None else 0
    total = n_groups * bins
    counts = _histograms(low + offset, chromatic * (1 - upper), total) + _histograms(high + offset, chromatic * upper, total)
    return counts.view(pixels.shape[0], n_groups, bins)


def _chromatic_shares(counts: torch.Tensor, pixels: torch.Tensor | float, floor: float) -> torch.Tensor:
    """Hue counts (`(..., bins)`) as fractions of their chromatic pixels, or of `floor * pixels`
    where fewer pixels than that are chromatic."""
    least = torch.as_tensor(floor * pixels, dtype=counts.dtype, device=counts.device)
    return counts / torch.maximum(counts.sum(-1, keepdim=True), least)


def _cell_of(h: int, w: int, grid: int, device: torch.device) -> torch.Tensor:
    """`(h * w,)` the grid cell of each pixel, row-major, cut as `adaptive_avg_pool2d` cuts them
    (floor(i * grid / size))."""
    rows = (torch.arange(h, device=device) * grid // h)[:, None]
    cols = (torch.arange(w, device=device) * grid // w)[None, :]
    return (rows * grid + cols).flatten()


def _occupancy(chromatic: torch.Tensor, cell_of: torch.Tensor, cells: int) -> torch.Tensor:
    """`(n, cells)` each cell's share of chromatic pixels (0..1), from `(n, p)` 0/1 flags and each
    pixel's cell."""
    sizes = torch.bincount(cell_of, minlength=cells).clamp_min(1).to(chromatic.dtype)
    return _histograms(cell_of.expand_as(chromatic), chromatic, cells) / sizes


def _hue_histogram(pixels: torch.Tensor, bins: int) -> torch.Tensor:
    """`(n, bins)` soft hue histogram of `(n, 3, p)` pixels in 0..1: fractions of the chromatic
    pixels (see `MIN_CHROMATIC_SHARE`)."""
    return _chromatic_shares(_hue_counts(pixels, bins)[:, 0], float(pixels.shape[2]), MIN_CHROMATIC_SHARE)


def colour_tokens(rgb: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """`(n, FEATURE_DIM)` colour tokens for `(n, 3, h, w)` pixels in 0..1.

    Layout (then times `COLOUR_SCALE`, zero beyond `spec.colour_width`):
    per-channel mean (3, in 0..1); per-channel std x 2 (3, in 0..1); the square root of the
    soft joint RGB histogram's pixel fractions (`colour_bins ** 3`, unit norm: the square root
    keeps a small shape's colour visible beside a large background); the square root of the
    soft hue histogram's fractions of the chromatic pixels (`hue_bins`, norm <= 1, 0 for grey:
    it tells pink from white and orange from red where coarse RGB bins cannot); then each grid
    cell's mean RGB minus the image's mean, halved (`3 * grid * grid`, row-major, r g b per
    cell; about 1-2 for a few shapes on a plain background): colour *where*, aligned with the
    spatial tokens, relative to the mean so a bright background does not outweigh the blocks
    that say *which* colours. `spec.colour_layout` names the slices. Histograms are taken at
    half resolution (2 x 2 averages): a quarter of the work, and a shape's colour does not
    depend on single pixels.
    """
    pixels = rgb.flatten(2)
    mean = pixels.mean(2)
    cells = F.adaptive_avg_pool2d(rgb, spec.grid).flatten(2) - mean[:, :, None]
    parts = [mean, 2 * pixels.std(2, unbiased=False)]
    half = F.avg_pool2d(rgb, 2) if min(rgb.shape[2:]) >= 2 else rgb
    small = half.flatten(2)
    parts.append(_rgb_histogram(small, spec.colour_bins).sqrt())
    if spec.hue_bins:
        parts.append(_hue_histogram(small, spec.hue_bins).sqrt())
    parts.append(0.5 * cells.transpose(1, 2).flatten(1))
    if spec.occupancy:
        chromatic = _hue(small)[1]
        parts.append(_occupancy(chromatic, _cell_of(*half.shape[2:], spec.grid, rgb.device), spec.grid**2))
    token = torch.cat(parts, dim=1) * COLOUR_SCALE
    return F.pad(token, (0, FEATURE_DIM - token.shape[1]))


def cell_colours(rgb: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """`(n, grid * grid, spec.cell_colour_width)` per-cell colour for `(n, 3, h, w)` pixels in 0..1,
    row-major like the grid tokens: the cell's mean RGB minus the image's mean (3), then the
    square root of the cell's soft hue histogram (`cell_hue_bins`) as fractions of its chromatic
    pixels (at least `MIN_CELL_CHROMATIC_SHARE` of the cell), all times `COLOUR_SCALE`.

    Appended to the grid token of the same cell, this binds colour to place and to the deep
    features of what stands there: "the circle is red" is one token's content, not a match
    the language model must make between a shape in one token and a colour in another (with
    a red square and a blue circle in the picture, the image-wide colour token says "red and
    blue" and nothing more). Measured on the shapes held-out split at step 150 of the
    benchmark: colour exact match 0.10 without it, 0.30 with it.
    """
    n, grid = rgb.shape[0], spec.grid
    mean = rgb.flatten(2).mean(2)
    cells = F.adaptive_avg_pool2d(rgb, grid).flatten(2) - mean[:, :, None]  # (n, 3, cells)
    parts = [cells.transpose(1, 2)]
    small = F.avg_pool2d(rgb, 2) if min(rgb.shape[2:]) >= 2 * grid else rgb
    cell_of = _cell_of(*small.shape[2:], grid, rgb.device)
    counts = _hue_counts(small.flatten(2), spec.cell_hue_bins, cell_of, grid * grid)
    sizes = torch.bincount(cell_of, minlength=grid * grid).clamp_min(1).to(counts.dtype)
    parts.append(_chromatic_shares(counts, sizes[None, :, None], MIN_CELL_CHROMATIC_SHARE).sqrt())
    if spec.occupancy:  # the hue counts of a cell add up to its chromatic pixels
        parts.append((counts.sum(-1) / sizes)[:, :, None])
    return torch.cat(parts, dim=2) * COLOUR_SCALE


class ImageFeatures:
    """Images -> `(n, k, spec.token_dim)` frozen feature tokens, each distinct image computed once; thread-safe."""

    def __init__(
        self, classifier: ImageNetClassifier, spec: FeatureSpec = FeatureSpec(), cache_size: int = 256
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.classifier = classifier
        self.spec = spec
        self.cache_size = cache_size  # 256 images x 11 tokens x ~1290 x 4 bytes = 14 MiB
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Held while computing, so two requests for one new image compute it once, not twice.
        self._lock = threading.Lock()
        self._mean = torch.tensor(MEAN, device=classifier.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=classifier.device).view(1, 3, 1, 1)

    @property
    def tokens_per_image(self) -> int:
        return self.spec.tokens_per_image

    @property
    def feature_dim(self) -> int:
        """Each token's width: 1280 deep features, then the grid cells' colour (`FeatureSpec.token_dim`)."""
        return self.spec.token_dim

    @staticmethod
    def _key(image: Image.Image) -> str:
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """`(len(images), tokens_per_image, feature_dim)` float32 on the classifier's device, no grad.

        The result is a fresh tensor: writing into it does not touch the cache.
        """
        if isinstance(images, Image.Image):
            raise TypeError("pass a list of images, not a single image")
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"expected PIL.Image.Image items, got {type(image).__name__}")
        if len(images) == 0:
            return torch.zeros(0, self.tokens_per_image, self.feature_dim, device=self.classifier.device)
        keys = [self._key(image) for image in images]
        with self._lock:
            missing = {key: image for key, image in zip(keys, images) if key not in self._cache}
            computed = dict(zip(missing, self._compute(list(missing.values())))) if missing else {}
            result = torch.stack([computed[k] if k in computed else self._cache[k] for k in keys])
            for key in keys:
                if key in computed:
                    self._cache[key] = computed[key]
                if key in self._cache:
                    self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def _compute(self, images: list[Image.Image]) -> list[torch.Tensor]:
        model = self.classifier._model  # the classifier's frozen network; this module only taps it
        out = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH_SIZE):
                pixels = self.classifier._pixels(images[start : start + BATCH_SIZE])
                feature_map = model.extract_features(pixels)  # (n, 1280, 7, 7)
                grid = F.adaptive_avg_pool2d(feature_map, self.spec.grid).flatten(2).transpose(1, 2)
                # The classifier's own pooling, so this token is `classifier.features` (scaled).
                pooled = model._avg_pooling(feature_map).flatten(1)
                grid, pooled = grid / self.spec.deep_divisor, pooled / self.spec.deep_divisor
                rgb = (pixels * self._std + self._mean).clamp(0, 1)
                colour = colour_tokens(rgb, self.spec)
                tokens = torch.cat([grid, pooled[:, None], colour[:, None]], dim=1).float()
                if self.spec.cell_colour_width:
                    extra = torch.zeros(tokens.shape[0], tokens.shape[1], self.spec.cell_colour_width)
                    extra[:, : self.spec.pooled_index] = cell_colours(rgb, self.spec)
                    tokens = torch.cat([tokens, extra.to(tokens)], dim=2)
                out.extend(tokens.contiguous().unbind(0))
        # Each cached entry owns its storage (not a view into the batch), so evicting one frees it.
        return [token.clone() for token in out]

    def __repr__(self) -> str:
        return f"ImageFeatures({self.spec}, k={self.tokens_per_image}, dim={self.feature_dim})"


@functools.lru_cache(maxsize=4)
def _shared(cache_dir: Path, spec: FeatureSpec, device: str) -> ImageFeatures:
    return ImageFeatures(shared_classifier(cache_dir, device=device), spec)


def shared_features(
    cache_dir: str | Path | None = None, spec: FeatureSpec = FeatureSpec(), device: str = "cpu"
) -> ImageFeatures:
    """One `ImageFeatures` (and its cache) per (cache, spec, device) per process, on the shared
    classifier: serving and evaluation in one process then compute each image once."""
    return _shared(Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser(), spec, device)
