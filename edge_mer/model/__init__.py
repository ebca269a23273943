"""The multi-scale multi-modal transformer (torch). Never imported by the device runtime."""

from edge_mer.model.config import MODELS, MMTConfig, model_config

__all__ = ["MODELS", "MMTConfig", "model_config"]
