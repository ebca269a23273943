"""Training one model on a set of samples, and predicting with it.

AdamW with a linear warm-up and a cosine schedule, a fixed epoch budget (the
last epoch's model is the result: no epoch is ever picked on test data),
class-weighted cross-entropy (weights 1/sqrt(class frequency) of the training
samples) plus the contrastive term, and augmentations that keep the modalities
consistent: a horizontal flip mirrors both and negates u; a shift moves both by
the same pixels; a gain scales the flow (u, v, strain) as a faster or slower
expression would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.model.build import build_model
from edge_mer.model.config import MMTConfig
from edge_mer.model.mmt import Recogniser


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    seed: int = 0
    flip: bool = True
    max_shift: int = 4
    gain: tuple[float, float] = (0.8, 1.25)
    class_weighting: bool = True  # cross-entropy weighted by 1/sqrt(class frequency); False: unweighted


def augment(motion: torch.Tensor, texture: torch.Tensor, cfg: TrainConfig,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    b = motion.shape[0]
    if cfg.flip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(motion.device)
        if flip.any():
            motion, texture = motion.clone(), texture.clone()
            motion[flip] = motion[flip].flip(-1)
            motion[flip, 0] = -motion[flip, 0]  # mirrored horizontal motion changes sign
            texture[flip] = texture[flip].flip(-1)
    if cfg.max_shift > 0:
        dx, dy = (int(v) for v in torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,), generator=gen))
        motion = torch.roll(motion, (dy, dx), (-2, -1))
        texture = torch.roll(texture, (dy, dx), (-2, -1))
    lo, hi = cfg.gain
    g = lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)
    return motion * g.to(motion.device), texture


def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def train_model(model_cfg: MMTConfig, cfg: TrainConfig, motion: np.ndarray, texture: np.ndarray,
                labels: np.ndarray, seed: int, wrap: Callable[[nn.Module], nn.Module] | None = None,
                shard: tuple[int, int] = (0, 1),
                on_epoch: Callable[[int, float], None] | None = None, init: Recogniser | None = None,
                device: str = "cpu") -> Recogniser:
    """Train an MMT (or a baseline: ``build_model``) on the given samples for exactly ``cfg.epochs`` epochs.

    From scratch, or from ``init`` (fine-tuning, e.g. with fake quantizers in it). On ``device`` ("cpu",
    "cuda:0", ...: the samples are moved there once); the trained model is returned on the CPU, in eval mode.

    ``wrap`` (e.g. DistributedDataParallel) and ``shard`` (rank, world) split each
    batch over processes; every process draws the same permutation.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # draws on the CPU: the same order and augmentation on any device
    model = (init if init is not None else build_model(model_cfg)).to(device)
    net: nn.Module = TrainStep(model)
    if wrap:
        net = wrap(net)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = class_weights(labels, model_cfg.num_classes).to(device) if cfg.class_weighting else None
    m_all, t_all = torch.from_numpy(motion).to(device), torch.from_numpy(texture).to(device)
    y_all = torch.from_numpy(labels).to(device)
    n = len(labels)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    rank, world = shard
    step = 0
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size].to(device)
            # every process augments the whole batch with the same draws, then keeps its share
            m, t = augment(m_all[idx], t_all[idx], cfg, gen)
            if world > 1:
                m, t, idx = m[rank::world], t[rank::world], idx[rank::world]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            logits, contrast = net(m, t)
            loss = F.cross_entropy(logits, y_all[idx], weight=weights) + model_cfg.contrastive_weight * contrast
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * len(idx)
            step += 1
        if on_epoch:
            on_epoch(epoch, running / max(1, n // max(world, 1)))
    model.eval()
    return model.cpu()


class TrainStep(nn.Module):
    """Routes ``forward_train`` through ``__call__``, where DistributedDataParallel hooks in."""

    def __init__(self, model: Recogniser) -> None:
        super().__init__()
        self.model = model

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(motion, texture)


@torch.no_grad()
def predict(model: Recogniser, motion: np.ndarray, texture: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, classes)."""
    model.eval()
    out = []
    for s in range(0, len(motion), batch_size):
        logits = model(torch.from_numpy(motion[s:s + batch_size]), torch.from_numpy(texture[s:s + batch_size]))
        out.append(torch.softmax(logits, -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.num_classes), np.float32)
