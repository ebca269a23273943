"""Training one model on a set of samples, and predicting with it.

AdamW with a linear warm-up and a cosine schedule, a fixed epoch budget (the
last epoch's model is the result: no epoch is ever picked on test data),
class-weighted cross-entropy (weights 1/sqrt(class frequency) of the training
samples; ``class_power`` 1: 1/frequency) plus the contrastive term, and
augmentations that keep the modalities consistent: a horizontal flip mirrors
both and negates u; a shift moves both by the same pixels; a gain scales the
flow (u, v, strain) as a faster or slower expression would; a rotation and a
zoom (per sample, off by default) turn and scale both images as a tilted or
nearer face would, and turn and scale the flow vectors with them (strain, a
magnitude of flow derivatives, keeps its value under both); mixup (off by
default) blends pairs of samples and their class targets; label smoothing (off
by default) spreads a share of each target over the classes, for annotations
that are sometimes wrong. An ensemble's partner may train at a peak learning
rate of its own (``partner_lr``; on the development draw the regional CNN
trains best at ten times the MMT's), on the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.errors import UserError
from edge_mer.model.build import build_model
from edge_mer.model.config import MMTConfig
from edge_mer.model.ensemble import Ensemble
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
    class_weighting: bool = True  # cross-entropy weighted by frequency ** -class_power; False: unweighted
    class_power: float = 0.5  # 0.5: 1/sqrt(class frequency); 1: 1/frequency (each class weighs as much in all)
    rotate: float = 0.0  # degrees: each sample turned by an angle drawn from [-rotate, rotate]
    zoom: tuple[float, float] = (1.0, 1.0)  # each sample scaled by a factor drawn from this range
    mixup: float = 0.0  # > 0: each sample blended with another of its batch, share drawn from Beta(mixup, mixup)
    label_smoothing: float = 0.0  # share of each target spread evenly over the classes (for annotations that err)
    partner_lr: float = 0.0  # > 0: an ensemble's partner trains at this peak learning rate instead of lr

    def __post_init__(self) -> None:
        if not 0 <= self.rotate <= 45:
            raise UserError(f"rotate={self.rotate}: expected degrees from 0 to 45")
        if not 0.5 <= self.zoom[0] <= self.zoom[1] <= 2.0:
            raise UserError(f"zoom={list(self.zoom)}: expected [low, high] with 0.5 <= low <= high <= 2")
        if self.mixup < 0:
            raise UserError(f"mixup={self.mixup}: expected 0 (off) or a positive Beta parameter")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing={self.label_smoothing}: expected a share from 0 (off) to below 1")
        if not 0 <= self.class_power <= 2:
            raise UserError(f"class_power={self.class_power}: expected 0 (unweighted) to 2; 0.5 is 1/sqrt(frequency)")
        if not self.partner_lr >= 0:
            raise UserError(f"partner_lr={self.partner_lr}: expected 0 (the partner at lr) or a learning rate")


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
    if cfg.rotate > 0 or cfg.zoom != (1.0, 1.0):
        angle = torch.deg2rad(cfg.rotate * (2 * torch.rand(b, generator=gen) - 1))
        zlo, zhi = cfg.zoom
        motion, texture = turn(motion, texture, angle, zlo + (zhi - zlo) * torch.rand(b, generator=gen))
    lo, hi = cfg.gain
    g = lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)
    return motion * g.to(motion.device), texture


def turn(motion: torch.Tensor, texture: torch.Tensor, angle: torch.Tensor,
         scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's images turned by ``angle`` (radians, clockwise on screen: x right, y down) and
    scaled by ``scale`` about the crop's centre, as the same face turned and nearer would look.

    A point p of the input lands at s R p, so the flow vectors become s R (u, v); strain is the norm
    of the symmetric flow gradient divided by nothing of length, so it keeps its value. Motion
    entering from outside the crop is zero (no movement), texture takes the border's grey.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates: p_in = R^-1 p_out / s
    inv = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], -1),
                       torch.stack([-sin, cos, torch.zeros_like(cos)], -1)], -2) / scale[:, None, None]
    inv = inv.to(motion.device, motion.dtype)
    grid = F.affine_grid(inv, list(motion.shape), align_corners=False)
    moved = F.grid_sample(motion, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    c, s_ = (cos * scale).to(motion.device)[:, None, None], (sin * scale).to(motion.device)[:, None, None]
    u, v = moved[:, 0], moved[:, 1]
    moved = torch.stack([c * u - s_ * v, s_ * u + c * v, *moved[:, 2:].unbind(1)], 1)
    grid_t = grid if texture.shape[-2:] == motion.shape[-2:] else \
        F.affine_grid(inv, list(texture.shape), align_corners=False)
    texture = F.grid_sample(texture, grid_t, mode="bilinear", padding_mode="border", align_corners=False)
    return moved, texture


def mixup(motion: torch.Tensor, texture: torch.Tensor, targets: torch.Tensor, alpha: float,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample blended with another of the batch (both modalities and the class targets by the same
    share, drawn per sample from Beta(alpha, alpha) and folded so the sample itself keeps the larger part)."""
    b = motion.shape[0]
    partner = torch.randperm(b, generator=gen)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, b).astype(np.float32))
    lam = torch.maximum(lam, 1 - lam).to(motion.device)
    partner = partner.to(motion.device)

    def blend(x: torch.Tensor) -> torch.Tensor:
        w = lam.view(-1, *([1] * (x.dim() - 1)))
        return w * x + (1 - w) * x[partner]

    return blend(motion), blend(texture), blend(targets)


def class_weights(labels: np.ndarray, classes: int, power: float = 0.5) -> torch.Tensor:
    """Each class's weight in the cross-entropy: its count ** -power, scaled to mean 1 over the classes present."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: Recogniser, cfg: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups, each with its peak learning rate: every parameter at ``cfg.lr``, or
    with ``cfg.partner_lr`` set, an ensemble partner's parameters at that rate and the rest at ``cfg.lr``."""
    if not cfg.partner_lr:
        return [{"params": list(model.parameters()), "peak_lr": cfg.lr}]
    partner = {id(p) for m in model.modules() if isinstance(m, Ensemble) for p in m.partner.parameters()}
    if not partner:
        raise UserError(f"partner_lr={cfg.partner_lr} needs a model with a partner (ensemble_with), and "
                        f"{model.cfg.arch} has none")
    return [{"params": [p for p in model.parameters() if id(p) not in partner], "peak_lr": cfg.lr},
            {"params": [p for p in model.parameters() if id(p) in partner], "peak_lr": cfg.partner_lr}]


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
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = class_weights(labels, model_cfg.num_classes, cfg.class_power).to(device) if cfg.class_weighting \
        else None
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
            target = y_all[idx]
            if cfg.mixup > 0:
                m, t, target = mixup(m, t, F.one_hot(target, model_cfg.num_classes).float(), cfg.mixup, gen)
            if world > 1:
                m, t, target = m[rank::world], t[rank::world], target[rank::world]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, g["peak_lr"])
            logits, contrast = net(m, t)
            members = logits if logits.dim() == 3 else logits[None]  # an Ensemble's members: each its own loss
            loss = sum((F.cross_entropy(x, target, weight=weights, label_smoothing=cfg.label_smoothing)
                        for x in members), contrast.new_zeros(()))
            loss = loss + model_cfg.contrastive_weight * contrast
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * len(target)
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
