"""The model's one constructor argument, and the registry of named variants.

Checkpoints store this config, so export and runtime rebuild the model without
the training code. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from edge_mer.errors import UserError

ARCHITECTURES = ("mmt", "ststnet", "htnet")
STEMS = ("patch", "conv", "strided")  # how an MMT's patches become tokens (MMTConfig.stem)
PARTNERS = ("ststnet", "ststnet_regions")  # models a model can be trained beside (ensemble_with)


@dataclass(frozen=True)
class MMTConfig:
    size: int = 112  # S: the crop size of the features
    patch_sizes: tuple[int, ...] = (14, 28)  # one patch embedding per (modality, scale)
    modalities: tuple[str, ...] = ("motion", "texture")
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pooling: str = "fused"  # "fused": attention-weighted patch pooling; "cls": the CLS token
    num_classes: int = 3
    class_names: tuple[str, ...] = ("negative", "positive", "surprise")
    proj_dim: int = 64  # contrastive projection
    contrastive_weight: float = 0.1  # lambda; 0 switches the contrastive term off
    temperature: float = 0.1  # tau
    channels: dict[str, int] = field(default_factory=lambda: {"motion": 3, "texture": 1})
    arch: str = "mmt"  # "mmt", or a baseline trained under the same protocol ("ststnet", "htnet")
    # htnet: the motion is resized to side x side (0: its paper's 28); ststnet: 0 (or 28) the whole face at 28,
    # 56 four 28 x 28 regions of it at 56 (eyes and mouth corners: baselines.py)
    side: int = 0
    # > 0: every sample's motion is scaled so that its flow's RMS magnitude is this many flow units (at most x4,
    # so still flow is not blown up into noise); 0: the fixed units of edge_mer.flow.normalise alone
    motion_rms: float = 0.0
    # > 0: the model reads each expression multiplied by its person's gain, this many flow units over the
    # median RMS flow of that person's other expressions (at most x4; edge_mer.flow.person), applied to its
    # inputs by whoever feeds it: training, evaluation and the device runtime; 0: off
    person_rms: float = 0.0
    # "ststnet" (or "ststnet_regions"): the model is an ensemble of this model (an MMT or a baseline) and that
    # STSTNet trained beside it on the same batches, each on its own loss; it predicts from the mean of the two
    # log-probabilities (one graph, one file). "": alone
    ensemble_with: str = ""
    # True: the model predicts from the mean log-probability of each sample and its mirror image (u negated), so
    # a face and its mirror image get one answer; training is unchanged (its flip augmentation shows both)
    mirror_average: bool = False
    # True (an MMT): each branch's patch tokens come from the four regions of the face that HTNet crops (the eyes
    # and the mouth corners, each S/2 square; mmt.HT_REGIONS), one patch embedding for all four, instead of the
    # whole face: as many tokens, none on the forehead's centre, the cheeks or the chin
    regions: bool = False
    # True (an MMT): a branch pools its patch tokens by their fused attention weights first and normalises the
    # pooled vector, so how strongly one part of the face moved against another reaches the head; False: each
    # token is normalised, then pooled (every token as loud as the next)
    pool_then_norm: bool = False
    # "patch" (an MMT): each patch is projected to a token as it is (the paper's); "conv": a 3 x 3 convolution
    # (STEM_FILTERS filters, ReLU) and a 2 x 2 max-pool first, then patches of half the side of the pooled map
    # projected: local filters before the tokens, as a shallow CNN reads the motion (early convolutions help a
    # transformer trained on little data: Xiao et al., NeurIPS 2021, arXiv 2106.14881); "strided": the same
    # filters at a stride of 2 instead of the max-pool (Xiao et al.'s stem, one layer of it): the same tokens
    # from a quarter of the filter positions, so training and inference cost less
    stem: str = "patch"
    # an STSTNet (or ststnet_regions): its three streams' filters are the paper's 3, 5 and 8 times this
    stst_width: int = 1
    # True (an STSTNet): it also reads the motion less its mirror image (u negated), three more input channels
    # that are zero where the face moves as symmetrically as it is drawn: a smile of one mouth corner (SAMM's
    # contempt, R12) against one of both
    asymmetry: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture {self.arch!r}; choose from {', '.join(ARCHITECTURES)}")
        for p in self.patch_sizes:
            if self.size % p:
                raise UserError(f"patch size {p} does not divide the crop size {self.size}")
            if self.regions and self.arch == "mmt" and (self.size // 2) % p:
                raise UserError(f"patch size {p} does not divide the regions' side {self.size // 2}")
        if self.arch == "mmt" and self.dim % self.heads:  # HTNet's heads are dim // heads wide, as its code
            raise UserError(f"width {self.dim} is not divisible by {self.heads} heads")
        if self.stem not in STEMS:
            raise UserError(f"stem must be one of {', '.join(STEMS)}, not {self.stem!r}")
        if self.stem != "patch" and any(p % 2 for p in self.patch_sizes):
            raise UserError(f"a conv stem halves the map: its patch sizes must be even, not {self.patch_sizes}")
        if self.pooling not in ("fused", "cls"):
            raise UserError(f"pooling must be 'fused' or 'cls', not {self.pooling!r}")
        if not self.motion_rms >= 0:
            raise UserError(f"motion_rms must be 0 (off) or a positive number of flow units, not {self.motion_rms}")
        if not self.person_rms >= 0:
            raise UserError(f"person_rms must be 0 (off) or a positive number of flow units, not {self.person_rms}")
        if self.ensemble_with not in ("", *PARTNERS):
            raise UserError(f"ensemble_with must be '' or {' or '.join(map(repr, PARTNERS))} (a model's partner), "
                            f"not {self.ensemble_with!r}")
        if self.arch == "ststnet" and self.side not in (0, 28, 56):
            raise UserError(f"an STSTNet reads the whole face (side 0 or 28) or four regions (56), not side "
                            f"{self.side}")
        if not (isinstance(self.stst_width, int) and self.stst_width >= 1):
            raise UserError(f"stst_width must be a whole number from 1 (the paper's filters), not {self.stst_width!r}")
        if self.asymmetry and self.arch != "ststnet":
            raise UserError(f"asymmetry is an STSTNet's input (ststnet, ststnet_regions), not the {self.arch}'s")
        unknown = set(self.modalities) - {"motion", "texture"}
        if unknown or not self.modalities:
            raise UserError(f"modalities must be motion and/or texture, not {sorted(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MMTConfig:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)


# edge size: <= 3 M parameters and <= 0.5 GFLOPs per sample at S = 112
_SMALL = MMTConfig(patch_sizes=(14, 28), dim=128, depth=4, heads=4, mlp_ratio=2.0)
# mmt_small reading the eyes and the mouth corners (regions) through 3 x 3 filters at a stride of 2 (the strided
# stem) before its patch tokens: local filters on what the regional CNN reads, at twice its resolution, then
# attention (motion only, as the recipe trains it, 1.6 M parameters and 0.13 GFLOPs; with the texture branch
# 3.2 M). Across draws level with the conv stem (max-pooled) at 0.6 of its training time
_SMALL_REGIONS = replace(_SMALL, regions=True, stem="strided")

MODELS: dict[str, MMTConfig] = {
    # research size
    "mmt_base": MMTConfig(patch_sizes=(8, 16), dim=192, depth=6, heads=6, mlp_ratio=4.0, proj_dim=128),
    "mmt_small": _SMALL,
    # tiny, for CI
    "mmt_test": MMTConfig(patch_sizes=(16, 28), dim=32, depth=1, heads=2, mlp_ratio=2.0, proj_dim=16,
                          dropout=0.0),
    # mmt_small on the regions through a conv stem (above)
    "mmt_small_regions": _SMALL_REGIONS,
    # the same with the regional STSTNet trained beside it (the pair; train it with partner_lr=0.01)
    "mmt_small_regions_ens_regions": replace(_SMALL_REGIONS, ensemble_with="ststnet_regions"),
    # mmt_small and the shallow CNN below trained side by side, predicting together (their errors differ)
    "mmt_small_ens": replace(_SMALL, ensemble_with="ststnet"),
    # the same with the regional STSTNet (ststnet_regions) as the partner
    "mmt_small_ens_regions": replace(_SMALL, ensemble_with="ststnet_regions"),
    # the MEGC2019 shallow CNN baseline (motion only, 28 x 28): edge_mer/model/baselines.py
    "ststnet": MMTConfig(arch="ststnet", modalities=("motion",), contrastive_weight=0.0, dropout=0.5),
    # the same on the eyes and mouth corners at twice the resolution (a variant of ours, not the paper's)
    "ststnet_regions": MMTConfig(arch="ststnet", modalities=("motion",), contrastive_weight=0.0, dropout=0.5,
                                 side=56),
    # the same with twice the filters in each stream (6, 10 and 16)
    "ststnet_regions_wide": MMTConfig(arch="ststnet", modalities=("motion",), contrastive_weight=0.0, dropout=0.5,
                                      side=56, stst_width=2),
    # the hierarchical transformer baseline (its authors' configuration; 28 x 28 motion): baselines.py
    "htnet": MMTConfig(arch="htnet", modalities=("motion",), contrastive_weight=0.0, dim=256, heads=3,
                       mlp_ratio=4.0, dropout=0.0),
    # the same with 56 x 56 input, so that its attention sees four tokens a block (a deviation from the paper)
    "htnet_56": MMTConfig(arch="htnet", modalities=("motion",), contrastive_weight=0.0, dim=256, heads=3,
                          mlp_ratio=4.0, dropout=0.0, side=56),
}

ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "single-scale": {"patch_sizes": "first"},
    "motion-only": {"modalities": ("motion",)},
    "texture-only": {"modalities": ("texture",)},
    "cls-pooling": {"pooling": "cls"},
    "no-contrastive": {"contrastive_weight": 0.0},
}


def partner_config(cfg: MMTConfig) -> MMTConfig:
    """The config of the model ``cfg.ensemble_with`` names, sized and labelled as ``cfg``."""
    return replace(MODELS[cfg.ensemble_with], size=cfg.size, num_classes=cfg.num_classes,
                   class_names=cfg.class_names, channels=cfg.channels, motion_rms=cfg.motion_rms)


def model_config(name: str, size: int | None = None, ablation: str = "full",
                 changes: dict[str, Any] | None = None) -> MMTConfig:
    """The named model with an ablation applied, sized to the crop ``size``; ``changes`` set fields directly."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    cfg = MODELS[name]
    if changes:
        unknown = set(changes) - {f.name for f in fields(MMTConfig)}
        if unknown:
            raise UserError(f"unknown model setting(s) {', '.join(sorted(unknown))}")
        given: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        cfg = replace(cfg, **given)
    if cfg.arch != "mmt" and ablation != "full":
        raise UserError(f"the ablations are of the MMT; {name} has none")
    ablated = dict(ABLATIONS[ablation])
    if ablated.get("patch_sizes") == "first":
        ablated["patch_sizes"] = cfg.patch_sizes[:1]
    if len(ablated.get("modalities", cfg.modalities)) < 2:
        ablated["contrastive_weight"] = 0.0  # one modality has nothing to contrast with
    if size is not None and size != cfg.size:
        patches = tuple(p for p in ablated.get("patch_sizes", cfg.patch_sizes) if size % p == 0)
        if not patches:
            raise UserError(f"model {name} has no patch size that divides the crop size {size}")
        ablated["patch_sizes"] = patches
        ablated["size"] = size
    return replace(cfg, **ablated)
