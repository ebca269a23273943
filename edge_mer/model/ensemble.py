"""An MMT and a partner model in one module: trained side by side, predicting together.

Under LOSO on the diverse composite the MMT and the shallow CNN (STSTNet) agree on only about 86 % of the
samples, while two seeds of one architecture agree on 97 %: their errors differ, so their mean
log-probability is right more often than either. Both members see the same batches and augmentation, each
is trained on its own cross-entropy (their parameters are disjoint, so neither's loss moves the other), and
``forward`` gives the mean of their log-probabilities: one graph, one ONNX file, one INT8 calibration.
"""

from __future__ import annotations

import torch

from edge_mer.model.mmt import Recogniser


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
