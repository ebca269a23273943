"""One constructor for every architecture a config can name (torch)."""

from __future__ import annotations

from dataclasses import replace

from edge_mer.model.baselines import HTNet, STSTNet, htnet_flops, ststnet_flops
from edge_mer.model.config import MMTConfig, partner_config
from edge_mer.model.ensemble import Ensemble, MirrorAverage
from edge_mer.model.mmt import MMT, Recogniser
from edge_mer.model.mmt import flops_per_sample as mmt_flops


def build_model(cfg: MMTConfig) -> Recogniser:
    """The MMT, or the baseline ``cfg.arch`` names (same inputs, same ``forward_train``); a model with
    ``ensemble_with`` set comes with its partner model as one ``Ensemble``; with ``mirror_average`` set, the
    model is asked about each sample and its mirror image (``MirrorAverage``)."""
    if cfg.mirror_average:
        return MirrorAverage(build_model(replace(cfg, mirror_average=False)))
    own = {"ststnet": STSTNet, "htnet": HTNet}.get(cfg.arch, MMT)(cfg)
    return Ensemble(own, build_model(partner_config(cfg))) if cfg.ensemble_with else own


def flops_per_sample(cfg: MMTConfig) -> int:
    """Multiply-adds x 2 of one forward pass of ``cfg``'s model (its partner's and a mirror pass included)."""
    if cfg.mirror_average:
        return 2 * flops_per_sample(replace(cfg, mirror_average=False))
    own = {"ststnet": ststnet_flops, "htnet": htnet_flops}.get(cfg.arch, mmt_flops)(cfg)
    return own + flops_per_sample(partner_config(cfg)) if cfg.ensemble_with else own
