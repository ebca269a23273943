"""The fixed normalisation of the model inputs (INT8 calibration relies on it).

* flow u, v: pixels of the S-pixel crop rescaled to a 112-pixel crop, divided by
  ``FLOW_UNIT`` (2 px, the top of the micro-expression range), clipped to
  ``[-CLIP, CLIP]``;
* strain: divided by ``STRAIN_UNIT``, clipped to ``[0, CLIP]``;
* flow computed on a crop k times finer (features prepared with ``oversample``
  k): averaged over k x k blocks to S x S first, the strain taken of the mean;
* texture: grey level / 255, minus ``TEXTURE_MEAN``, divided by ``TEXTURE_STD``;
* texture as a difference (features prepared with ``texture="difference"``): the
  apex's grey level minus the onset's, divided by ``DIFFERENCE_UNIT`` grey levels,
  clipped to ``[-CLIP, CLIP]``.

These never depend on the data: a feature cache, a calibration set and a camera
frame on a device all use the same numbers.
"""

from __future__ import annotations

import numpy as np

from edge_mer.flow.opencv import optical_strain

FLOW_UNIT = 2.0
STRAIN_UNIT = 0.1
TEXTURE_MEAN = 0.5
TEXTURE_STD = 0.25
CLIP = 8.0
DIFFERENCE_UNIT = 8.0  # grey levels: about 1.5 times the spread of a micro-expression's apex-onset change

CONSTANTS = {"flow_unit_px_at_112": FLOW_UNIT, "strain_unit": STRAIN_UNIT, "texture_mean": TEXTURE_MEAN,
             "texture_std": TEXTURE_STD, "clip": CLIP}


def motion_tensor(flow: np.ndarray, oversample: int = 1) -> np.ndarray:
    """(3, S, S) float32: u, v, strain of an (S, S, 2) flow of an S-pixel crop.

    ``oversample`` k > 1: the flow is of a (kS, kS) crop k times finer (``FaceAlignment.finer``); it is
    averaged over k x k blocks (in pixels of the S-pixel crop), and the strain is taken of that mean. Motion of
    a pixel or less spans k times more pixels of the finer crop, where the flow resolves it better.
    """
    if oversample > 1:
        k = oversample
        side = flow.shape[0] // k
        if flow.shape[:2] != (side * k, side * k):
            raise ValueError(f"a flow of shape {flow.shape} is not of a square crop {k} times finer")
        flow = flow.reshape(side, k, side, k, 2).mean((1, 3), dtype=np.float32) / np.float32(k)
    size = flow.shape[0]
    strain = optical_strain(flow)
    uv = flow * np.float32(112.0 / size / FLOW_UNIT)
    out = np.empty((3, size, size), np.float32)
    out[0] = np.clip(uv[..., 0], -CLIP, CLIP)
    out[1] = np.clip(uv[..., 1], -CLIP, CLIP)
    out[2] = np.clip(strain / STRAIN_UNIT, 0, CLIP)
    return out


def texture_tensor(gray: np.ndarray) -> np.ndarray:
    """(1, S, S) float32 of a grey uint8 crop."""
    t = (gray.astype(np.float32) / 255.0 - TEXTURE_MEAN) / TEXTURE_STD
    return t[None]


def difference_tensor(onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
    """(1, S, S) float32: the grey-level change from the onset crop to the apex crop (both uint8).

    What moved and how its shading changed, without the face itself: the apex texture carries the
    subject's identity, which a subject left out of training does not share.
    """
    d = (apex.astype(np.float32) - onset.astype(np.float32)) / np.float32(DIFFERENCE_UNIT)
    return np.clip(d, -CLIP, CLIP)[None]
