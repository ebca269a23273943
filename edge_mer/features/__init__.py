"""Onset->apex features: optical flow u, v, optical strain and the apex texture."""
