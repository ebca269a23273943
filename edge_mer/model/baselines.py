"""Baselines trained and scored under the same protocol and features as the MMT.

``STSTNet``: the shallow triple-stream CNN of Liong et al., "Shallow Triple Stream Three-dimensional CNN
(STSTNet) for Micro-expression Recognition" (FG 2019, arXiv 1902.03634), the MEGC2019 baseline, built from
the paper's Table I: the motion input (u, v, optical strain) resized to 28 x 28, three parallel 3 x 3
convolutions with 3, 5 and 8 filters ('same' padding, ReLU), each followed by a 3 x 3 max-pool with stride 3
('same': 10 x 10), concatenated to 16 channels, a 2 x 2 average pool (5 x 5 x 16 = 400) and one fully
connected layer to the classes. The paper trains it with Adam at 5e-5 for 500 epochs without augmentation;
here it is trained with the same recipe as every other model so that the table compares architectures.
``ststnet_regions`` (``side`` 56, not the paper's) reads the eyes and the mouth corners at twice the paper's
resolution instead of the whole face: the motion resized to 56 x 56, the four regions HTNet crops (below), each
28 x 28, through the same three streams and pools (one set of filters for all four), their 4 x 400 features
into the fully connected layer. A weak mover's motion is averaged over 4 x 4 pixels of the 112-pixel crop
instead of 8 x 8, and the forehead's centre, the cheeks and the chin, where micro-expressions seldom move, are
left out.

``HTNet``: the hierarchical transformer of Wang et al., "HTNet for micro-expression recognition"
(Neurocomputing 2024, arXiv 2307.14637), rebuilt from the configuration its authors' code trains: the motion
(u, v, strain) resized to 28 x 28; four 14 x 14 regions around the eyes and the mouth corners tiled 2 x 2
into a new 28 x 28 input; 7 x 7 patches (a channel LayerNorm, a 1 x 1 convolution to width 256, a LayerNorm);
three levels of transformer blocks (2, 2 and 10 blocks; width 256, 512, 1024; 3, 6, 12 heads of width
dim // heads = 85), each level run on non-overlapping blocks of the token map (4 x 4, 2 x 2, 1 block) with one
learned scalar per position; pre-norm blocks of 1 x 1-convolution attention and a 1 x 1-convolution
feed-forward (x4, GELU); between levels a 3 x 3 convolution, a LayerNorm and a 3 x 3 max-pool with stride 2;
a LayerNorm, a global mean and one linear layer to the classes. With 28 x 28 input every block of every level
holds a single token, so its attention is a linear map of the values (the authors' configuration, kept);
``htnet_56`` (56 x 56 input, 28 x 28 regions) gives four tokens a block, a deviation named as one. The
regions sit on the canonical crop's mean landmarks (the features are aligned) instead of MTCNN's per-image
points. The authors select each test subject's best epoch on that subject; here the last epoch counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.model.config import MMTConfig
from edge_mer.model.mmt import HT_REGIONS, Mirror, Recogniser, regions

STST_SIZE = 28
STST_STREAMS = (3, 5, 8)
HT_PATCH = 7
HT_BLOCKS = (2, 2, 10)  # transformer blocks per level


def input_side(cfg: MMTConfig) -> int:
    """The side a baseline of ``cfg`` resizes the motion to: ``cfg.side``, or its paper's 28 where that is 0."""
    return cfg.side or STST_SIZE


def stst_filters(cfg: MMTConfig) -> tuple[int, ...]:
    """The filters of each of the STSTNet's three streams: the paper's 3, 5 and 8, times ``cfg.stst_width``."""
    return tuple(c * cfg.stst_width for c in STST_STREAMS)


def stst_channels(cfg: MMTConfig) -> int:
    """The channels the STSTNet of ``cfg`` reads: the motion's, and as many again with ``cfg.asymmetry``."""
    return cfg.channels["motion"] * (2 if cfg.asymmetry else 1)


def stst_tiles(cfg: MMTConfig) -> int:
    """How many 28 x 28 inputs the STSTNet of ``cfg`` reads: 1, the whole face at the paper's 28, or 4, the
    regions of the face at 56 (``cfg.side``, checked by the config)."""
    return 1 if input_side(cfg) == STST_SIZE else len(HT_REGIONS)


class STSTNet(Recogniser):
    def __init__(self, cfg: MMTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.side = input_side(cfg)
        self.tiles = stst_tiles(cfg)
        channels = stst_channels(cfg)
        self.mirror = Mirror(cfg.size) if cfg.asymmetry else None
        filters = stst_filters(cfg)
        self.streams = nn.ModuleList(nn.Conv2d(channels, c, 3, padding=1) for c in filters)
        self.pool = nn.MaxPool2d(3, stride=3, padding=1)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.tiles * sum(filters) * 5 * 5, cfg.num_classes)

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from motion (B, 3, S, S); the texture does not change them."""
        x = self.rescale(motion)
        if self.mirror is not None:  # (B, 6, S, S): the motion, and what of it its mirror image does not hold
            x = torch.cat([x, x - self.mirror(x)], 1)
        if self.tiles > 1:  # the regions as one batch of B x 4 through the streams
            x = torch.stack(regions(x, self.side), 1).flatten(0, 1)
        elif x.shape[-1] != STST_SIZE:
            x = F.adaptive_avg_pool2d(x, STST_SIZE)
        x = torch.cat([self.pool(F.relu(conv(x))) for conv in self.streams], 1)  # (B x tiles, 16 w, 10, 10)
        x = F.avg_pool2d(x, 2).reshape(-1, self.head.in_features)  # (B, tiles x 400 w)
        return self.keep_inputs(self.head(self.drop(x)), texture)  # costs one mean over the texture

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(motion, texture)
        return logits, logits.new_zeros(())


def ststnet_flops(cfg: MMTConfig) -> int:
    """Multiply-adds x 2 of one forward pass (the resize and the pools not counted)."""
    tiles = stst_tiles(cfg)
    filters = sum(stst_filters(cfg))
    convs = tiles * STST_SIZE * STST_SIZE * filters * stst_channels(cfg) * 9
    return 2 * (convs + tiles * filters * 25 * cfg.num_classes)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (biased variance, eps 1e-5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = ((x - mean) ** 2).mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.g + self.b


class ConvAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        inner = self.head_dim * heads
        self.norm = ChannelNorm(dim)
        self.qkv = nn.Conv2d(dim, 3 * inner, 1, bias=False)
        self.out = nn.Conv2d(inner, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, self.head_dim, h * w).transpose(2, 3)
                   for t in self.qkv(self.norm(x)).chunk(3, 1))  # (B, heads, N, d)
        attn = torch.softmax(q @ k.transpose(2, 3) * self.head_dim ** -0.5, -1)
        out = (attn @ v).transpose(2, 3).reshape(b, self.heads * self.head_dim, h, w)
        return self.drop(self.out(out))


class ConvFeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(ChannelNorm(dim), nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Dropout(dropout),
                                 nn.Conv2d(hidden, dim, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Level(nn.Module):
    """Transformer blocks run on each ``blocks`` x ``blocks`` tile of the token map separately."""

    def __init__(self, dim: int, heads: int, depth: int, tokens: int, blocks: int, mult: float,
                 dropout: float) -> None:
        super().__init__()
        self.blocks = blocks
        self.pos = nn.Parameter(torch.randn(tokens))  # one learned scalar per position within a tile
        self.attn = nn.ModuleList(ConvAttention(dim, heads, dropout) for _ in range(depth))
        self.ff = nn.ModuleList(ConvFeedForward(dim, mult, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        n = self.blocks
        h, w = hh // n, ww // n
        x = x.reshape(b, c, n, h, n, w).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, h, w)
        x = x + self.pos[: h * w].reshape(1, 1, h, w)
        for attn, ff in zip(self.attn, self.ff):
            x = x + attn(x)
            x = x + ff(x)
        return x.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)


class HTNet(Recogniser):
    def __init__(self, cfg: MMTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.side = input_side(cfg)
        if self.side % (2 * HT_PATCH):
            raise ValueError(f"HTNet's input side must be a multiple of {2 * HT_PATCH}, not {self.side}")
        channels = cfg.channels["motion"]
        patch_dim = channels * HT_PATCH * HT_PATCH
        self.embed = nn.Sequential(ChannelNorm(patch_dim), nn.Conv2d(patch_dim, cfg.dim, 1), ChannelNorm(cfg.dim))
        fmap = self.side // HT_PATCH
        levels = len(HT_BLOCKS)
        tokens = (fmap // 2 ** (levels - 1)) ** 2  # tokens a tile holds: the same at every level
        self.levels = nn.ModuleList()
        self.aggregate = nn.ModuleList()
        for i, depth in enumerate(HT_BLOCKS):
            dim, last = cfg.dim * 2 ** i, i == levels - 1
            self.levels.append(Level(dim, cfg.heads * 2 ** i, depth, tokens, 2 ** (levels - 1 - i), cfg.mlp_ratio,
                                     cfg.dropout))
            self.aggregate.append(nn.Identity() if last else nn.Sequential(
                nn.Conv2d(dim, 2 * dim, 3, padding=1), ChannelNorm(2 * dim), nn.MaxPool2d(3, stride=2, padding=1)))
        top = cfg.dim * 2 ** (levels - 1)
        self.norm = ChannelNorm(top)
        self.head = nn.Linear(top, cfg.num_classes)

    def regions(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, C, side, side): the four regions, each side/2 square, tiled 2 x 2."""
        crops = regions(motion, self.side)
        return torch.cat([torch.cat(crops[:2], -1), torch.cat(crops[2:], -1)], -2)

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from motion (B, 3, S, S); the texture enters with weight 0."""
        x = self.regions(self.rescale(motion))
        b, c, s, _ = x.shape
        n = s // HT_PATCH
        x = x.reshape(b, c, n, HT_PATCH, n, HT_PATCH).permute(0, 3, 5, 1, 2, 4).reshape(b, -1, n, n)
        x = self.embed(x)
        for level, aggregate in zip(self.levels, self.aggregate):
            x = aggregate(level(x))
        return self.keep_inputs(self.head(self.norm(x).mean((2, 3))), texture)

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(motion, texture)
        return logits, logits.new_zeros(())


def htnet_flops(cfg: MMTConfig) -> int:
    """Multiply-adds x 2 of one forward pass (matrix products and convolutions; norms and pools not counted)."""
    side = input_side(cfg)
    fmap = side // HT_PATCH
    tokens_tile = (fmap // 2 ** (len(HT_BLOCKS) - 1)) ** 2
    total = fmap * fmap * cfg.channels["motion"] * HT_PATCH * HT_PATCH * cfg.dim
    for i, depth in enumerate(HT_BLOCKS):
        dim, heads = cfg.dim * 2 ** i, cfg.heads * 2 ** i
        inner = dim // heads * heads
        n = (fmap // 2 ** i) ** 2  # tokens of the whole map at this level
        per_block = n * dim * 3 * inner + 2 * n * tokens_tile * inner + n * inner * dim
        per_block += 2 * n * dim * int(dim * cfg.mlp_ratio)
        total += depth * per_block
        if i < len(HT_BLOCKS) - 1:
            total += n * 9 * dim * 2 * dim
    return 2 * (total + cfg.dim * 2 ** (len(HT_BLOCKS) - 1) * cfg.num_classes)
