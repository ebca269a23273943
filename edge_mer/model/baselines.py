"""Baselines trained and scored under the same protocol and features as the MMT.

``STSTNet``: the shallow triple-stream CNN of Liong et al., "Shallow Triple Stream Three-dimensional CNN
(STSTNet) for Micro-expression Recognition" (FG 2019, arXiv 1902.03634), the MEGC2019 baseline, built from
the paper's Table I: the motion input (u, v, optical strain) resized to 28 x 28, three parallel 3 x 3
convolutions with 3, 5 and 8 filters ('same' padding, ReLU), each followed by a 3 x 3 max-pool with stride 3
('same': 10 x 10), concatenated to 16 channels, a 2 x 2 average pool (5 x 5 x 16 = 400) and one fully
connected layer to the classes. The paper trains it with Adam at 5e-5 for 500 epochs without augmentation;
here it is trained with the same recipe as every other model so that the table compares architectures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.model.config import MMTConfig
from edge_mer.model.mmt import Recogniser

STST_SIZE = 28
STST_STREAMS = (3, 5, 8)


class STSTNet(Recogniser):
    def __init__(self, cfg: MMTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.channels["motion"]
        self.streams = nn.ModuleList(nn.Conv2d(channels, c, 3, padding=1) for c in STST_STREAMS)
        self.pool = nn.MaxPool2d(3, stride=3, padding=1)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(sum(STST_STREAMS) * 5 * 5, cfg.num_classes)

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from motion (B, 3, S, S); the texture does not change them."""
        x = motion
        if x.shape[-1] != STST_SIZE:
            x = F.adaptive_avg_pool2d(x, STST_SIZE)
        x = torch.cat([self.pool(F.relu(conv(x))) for conv in self.streams], 1)  # (B, 16, 10, 10)
        x = F.avg_pool2d(x, 2).flatten(1)  # (B, 400)
        # the texture enters with weight 0 only so that the exported graph keeps both inputs of an edge-mer
        # model (an exporter drops an input nothing reads); it costs one mean over the texture
        return self.head(self.drop(x)) + 0.0 * texture.mean()

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(motion, texture)
        return logits, logits.new_zeros(())


def ststnet_flops(cfg: MMTConfig) -> int:
    """Multiply-adds x 2 of one forward pass (the resize and the pools not counted)."""
    convs = STST_SIZE * STST_SIZE * sum(STST_STREAMS) * cfg.channels["motion"] * 9
    return 2 * (convs + sum(STST_STREAMS) * 25 * cfg.num_classes)
