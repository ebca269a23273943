"""Multi-scale multi-modal transformer for micro-expression recognition.

Reconstructed from the abstract of "Multi-scale multi-modal micro-expression
recognition algorithm based on transformer" (arXiv 2301.02969):

* two modalities, motion (flow u, v, strain) and texture (apex frame), each cut
  into patches at several scales; one pre-norm encoder per (modality, scale),
  with a CLS token and learned position embeddings;
* attention is explicit (softmax(QK^T / sqrt(d))) so the CLS -> patch attention
  of every layer and head is available: learned softmax weights over
  (layer, head) fuse them into one weight per patch, normalised over the
  patches, which pools the final patch tokens ("fused"); or the CLS token
  ("cls") for the ablation;
* the scales of a modality are concatenated and projected to the modality's
  embedding; the classifier sees the modalities concatenated;
* cross-modal contrastive learning: a symmetric InfoNCE between projected motion
  and texture embeddings of the same sample, across the batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.model.config import MMTConfig

STEM_FILTERS = 16  # the conv stem's filters (MMTConfig.stem)

# the regions HTNet crops (baselines.py), image left first as the authors' MTCNN points: the subject's right eye,
# left eye, right and left mouth corner (fractions of the canonical crop: edge_mer.spot.signal.MEAN_LANDMARKS)
HT_REGIONS = ((0.321, 0.340), (0.679, 0.340), (0.334, 0.677), (0.674, 0.675))


def regions(motion: torch.Tensor, side: int) -> list[torch.Tensor]:
    """The four regions of ``HT_REGIONS`` of ``motion`` (B, C, S, S) resized to ``side``: each (B, C, side/2,
    side/2) around its point, moved inside the map where the point is nearer an edge than side/4."""
    x = F.adaptive_avg_pool2d(motion, side) if motion.shape[-1] != side else motion
    half, quarter = side // 2, side // 4
    crops = []
    for fx, fy in HT_REGIONS:
        cx = min(max(round(fx * side), quarter), side - quarter)
        cy = min(max(round(fy * side), quarter), side - quarter)
        crops.append(x[..., cy - quarter:cy - quarter + half, cx - quarter:cx - quarter + half])
    return crops


class Mirror(nn.Module):
    """Maps of side ``size`` mirrored left to right: ``forward`` a motion map (B, 3, S, S: u, v, strain) with u
    negated, as the flip augmentation does (strain, a magnitude, and v keep their values); ``image`` any map
    mirrored only. A Gather with constant indices and a product: both map to every runtime's plainest ops (ONNX
    Runtime, TensorRT, OpenCV DNN), where a negative-step slice does not everywhere."""

    reverse: torch.Tensor
    u_sign: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("reverse", torch.arange(size - 1, -1, -1), persistent=False)
        self.register_buffer("u_sign", torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1), persistent=False)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        return self.image(motion) * self.u_sign

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(3, self.reverse)


class Dropout(nn.Module):
    """``nn.Dropout`` whose mask comes from numpy's PCG64 bytes on a CPU.

    Torch's per-element Bernoulli draw on a CPU was a fifth of a training step of mmt_small on one core; this
    mask costs about a quarter of it (2.0 against 9.2 ms for a 32 x 4 x 65 x 65 map). The keep share is (256 - t) / 256
    with t = round(256 p), and the kept values are scaled by its inverse, so the expectation is unchanged.
    Each call seeds its generator from torch's, so ``torch.manual_seed`` still makes training repeat. Other
    devices, and evaluation, are ``F.dropout`` and the identity.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.cut = round(256 * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        draw = np.frombuffer(np.random.default_rng(seed).bytes(x.numel()), np.uint8).reshape(x.shape)
        keep = torch.from_numpy(draw >= self.cut).to(x.dtype).mul_(256 / (256 - self.cut))
        return x * keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        # (B, 3 heads, N, dh) split into q, k, v: a 5-D permute here made the backward pass's strided copy the
        # slowest single operation of a training step on a CPU
        q, k, v = self.qkv(x).reshape(b, n, 3 * self.heads, d // self.heads).transpose(1, 2).split(self.heads, 1)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)  # (B, heads, N, N)
        out = (self.drop(attn) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), attn


class Block(nn.Module):
    def __init__(self, cfg: MMTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), Dropout(cfg.dropout),
                                 nn.Linear(hidden, cfg.dim))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.attn(self.norm1(x))
        x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, attn


class Branch(nn.Module):
    """One (modality, scale): patch tokens + CLS through a pre-norm encoder, pooled to one vector."""

    def __init__(self, cfg: MMTConfig, channels: int, patch: int) -> None:
        super().__init__()
        self.cfg = cfg
        n = (cfg.size // patch) ** 2  # with cfg.regions: 4 regions x (S/2 / patch)^2, as many
        self.stem: nn.Module = nn.Identity()
        if cfg.stem == "conv":  # the max-pool before the ReLU: the same values, the ReLU on a quarter of them
            self.stem = nn.Sequential(nn.Conv2d(channels, STEM_FILTERS, 3, padding=1), nn.MaxPool2d(2), nn.ReLU())
        elif cfg.stem == "strided":
            self.stem = nn.Sequential(nn.Conv2d(channels, STEM_FILTERS, 3, stride=2, padding=1), nn.ReLU())
        if cfg.stem != "patch":
            channels, patch = STEM_FILTERS, patch // 2
        self.embed = nn.Conv2d(channels, cfg.dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        # learned weights over (layer, head) of the CLS -> patch attention
        self.fuse = nn.Parameter(torch.zeros(cfg.depth, cfg.heads))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        if self.cfg.regions:  # the four regions as one batch of B x 4 through the embedding
            x = torch.stack(regions(x, self.cfg.size), 1).flatten(0, 1)
        tokens = self.embed(self.stem(x)).flatten(2).transpose(1, 2).reshape(b, -1, self.cfg.dim)  # (B, N, dim)
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], 1) + self.pos
        cls_attn = []
        for blk in self.blocks:
            x, attn = blk(x)
            cls_attn.append(attn[:, :, 0, 1:])  # (B, heads, N): CLS -> patches
        maps = torch.stack(cls_attn, 1)  # (B, layers, heads, N)
        w = torch.softmax(self.fuse.flatten(), 0).reshape(1, self.cfg.depth, self.cfg.heads, 1)
        patch_w = (maps * w).sum((1, 2))  # (B, N)
        patch_w = patch_w / patch_w.sum(-1, keepdim=True).clamp_min(1e-6)
        if self.cfg.pooling == "cls":
            return self.norm(x[:, 0]), patch_w
        if self.cfg.pool_then_norm:
            return self.norm((patch_w.unsqueeze(-1) * x[:, 1:]).sum(1)), patch_w
        return (patch_w.unsqueeze(-1) * self.norm(x[:, 1:])).sum(1), patch_w


class Recogniser(nn.Module):
    """What training, QAT, export and the torch backends use of a model: ``forward(motion, texture)`` gives
    logits, ``forward_train`` the logits (an ensemble's: each member's, stacked (members, B, classes)) and an
    auxiliary loss, ``cfg`` rebuilds it."""

    cfg: MMTConfig

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def rescale(self, motion: torch.Tensor) -> torch.Tensor:
        """``motion`` (B, 3, S, S) with each sample's u, v and strain multiplied by one factor that brings the
        RMS magnitude of its flow to ``cfg.motion_rms`` (the factor is at most 4, for still faces); unchanged
        when that is 0. A subject who moves twice as strongly then gives the model the same input."""
        target = self.cfg.motion_rms
        if target <= 0:
            return motion
        rms = motion[:, :2].pow(2).sum(1).mean((1, 2), keepdim=True).sqrt()  # (B, 1, 1)
        return motion * (target / rms.clamp_min(target / 4)).unsqueeze(1)

    @staticmethod
    def keep_inputs(logits: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
        """``logits`` with each input the model does not read added at weight 0, so that an exported graph keeps
        both inputs of an edge-mer model (an exporter drops an input nothing reads)."""
        for x in unused:
            logits = logits + 0.0 * x.mean()
        return logits


class MMT(Recogniser):
    def __init__(self, cfg: MMTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.branches = nn.ModuleDict({
            f"{m}_{p}": Branch(cfg, cfg.channels[m], p) for m in cfg.modalities for p in cfg.patch_sizes})
        self.modality = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(cfg.dim * len(cfg.patch_sizes), cfg.dim), nn.GELU())
            for m in cfg.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.proj_dim) for m in cfg.modalities})
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim * len(cfg.modalities)), Dropout(cfg.dropout),
                                  nn.Linear(cfg.dim * len(cfg.modalities), cfg.num_classes))

    def embed(self, motion: torch.Tensor, texture: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"motion": self.rescale(motion), "texture": texture}
        out = {}
        for m in self.cfg.modalities:
            parts = [self.branches[f"{m}_{p}"](inputs[m])[0] for p in self.cfg.patch_sizes]
            out[m] = self.modality[m](torch.cat(parts, -1))
        return out

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from motion (B, 3, S, S) and texture (B, 1, S, S)."""
        emb = self.embed(motion, texture)
        logits = self.head(torch.cat([emb[m] for m in self.cfg.modalities], -1))
        inputs = {"motion": motion, "texture": texture}
        return self.keep_inputs(logits, *(x for name, x in inputs.items() if name not in self.cfg.modalities))

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the contrastive loss (0 when switched off or with one modality)."""
        emb = self.embed(motion, texture)
        logits = self.head(torch.cat([emb[m] for m in self.cfg.modalities], -1))
        if self.cfg.contrastive_weight <= 0 or len(self.cfg.modalities) < 2 or motion.shape[0] < 2:
            return logits, logits.new_zeros(())
        return logits, info_nce(self.project["motion"](emb["motion"]), self.project["texture"](emb["texture"]),
                                self.cfg.temperature)

    def patch_weights(self, motion: torch.Tensor, texture: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fused attention weight of every patch, per branch (for inspection; with ``cfg.regions`` the patches of
        the four regions in turn, each region's row by row)."""
        inputs = {"motion": self.rescale(motion), "texture": texture}
        return {name: br(inputs[name.split("_")[0]])[1] for name, br in self.branches.items()}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` against the rest of the batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: MMTConfig) -> int:
    """Multiply-adds x 2 of one forward pass (matrix products and the patch embeddings)."""
    total = 0
    hidden = int(cfg.dim * cfg.mlp_ratio)
    for m in cfg.modalities:
        c = cfg.channels[m]
        for p in cfg.patch_sizes:
            n = (cfg.size // p) ** 2
            t = n + 1
            if cfg.stem != "patch":  # 3 x 3 filters at S (conv) or S/2 (strided), then half-side patches
                at = cfg.size if cfg.stem == "conv" else cfg.size // 2
                total += at * at * c * 9 * STEM_FILTERS + n * STEM_FILTERS * (p // 2) ** 2 * cfg.dim
            else:
                total += n * c * p * p * cfg.dim  # patch embedding
            per_layer = t * cfg.dim * 3 * cfg.dim + 2 * t * t * cfg.dim + t * cfg.dim * cfg.dim
            per_layer += 2 * t * cfg.dim * hidden
            total += cfg.depth * per_layer
        total += cfg.dim * len(cfg.patch_sizes) * cfg.dim
    total += cfg.dim * len(cfg.modalities) * cfg.num_classes
    return 2 * total
