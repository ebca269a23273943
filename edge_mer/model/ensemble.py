"""Models that predict from a mean of log-probabilities: a model (an MMT or a baseline) and a partner model
trained side by side (``Ensemble``), and any model asked about a sample and its mirror image (``MirrorAverage``).

Under LOSO on the diverse composite the MMT and the shallow CNN (STSTNet) agree on only about 86 % of the
samples, while two seeds of one architecture agree on 97 %: their errors differ, so their mean
log-probability is right more often than either. Both members see the same batches and augmentation, each
is trained on its own cross-entropy (their parameters are disjoint, so neither's loss moves the other), and
``forward`` gives the mean of their log-probabilities: one graph, one ONNX file, one INT8 calibration.

Training already shows every sample mirrored half of the time (the flip augmentation), so a model reads a face
and its mirror image alike, but not identically; ``MirrorAverage`` asks it about both and averages, so the two
get one answer. It costs a second pass (run as one batch of two), is trained exactly as the model alone, and
exports as one graph like the ensemble. Measured on the development draw it does not pay (the ensemble -0.008
UF1, STSTNet -0.001: benchmarks/results/recipe.md), so it is off by default.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from edge_mer.model.mmt import Mirror, Recogniser


class Ensemble(Recogniser):
    def __init__(self, lead: Recogniser, partner: Recogniser) -> None:
        super().__init__()
        self.cfg = lead.cfg
        self.lead = lead
        self.partner = partner

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes): the members' log-probabilities averaged (a normalised geometric mean)."""
        return torch.stack([m(motion, texture).log_softmax(-1) for m in (self.lead, self.partner)]).mean(0)

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's logits, stacked (2, B, classes), so that each is trained on its own loss; the lead's
        auxiliary loss (its contrastive term)."""
        lead, aux = self.lead.forward_train(motion, texture)
        partner, _ = self.partner.forward_train(motion, texture)
        return torch.stack([lead, partner]), aux


class MirrorAverage(Recogniser):
    """``model`` predicting from the mean log-probability of each sample and its mirror image: both images
    mirrored left to right and the horizontal flow u negated (strain, a magnitude, and v keep their values), as
    the flip augmentation does. ``forward_train`` is the model's own: training is unchanged."""

    def __init__(self, model: Recogniser) -> None:
        super().__init__()
        self.cfg = replace(model.cfg, mirror_average=True)
        self.model = model
        self.mirror = Mirror(model.cfg.size)

    def forward(self, motion: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes): the log-probabilities of the sample and of its mirror image, averaged."""
        both = self.model(torch.cat([motion, self.mirror(motion)]), torch.cat([texture, self.mirror.image(texture)]))
        return both.log_softmax(-1).reshape(2, -1, both.shape[-1]).mean(0)

    def forward_train(self, motion: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(motion, texture)
