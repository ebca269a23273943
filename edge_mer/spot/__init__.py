"""Micro-expression spotting: where in a long video or a live stream a micro-expression happens.

* ``edge_mer.spot.signal``: a cheap per-frame motion signal over facial regions of the
  aligned face crop (``MotionSignal``), with head-motion compensation and blink suppression;
* ``edge_mer.spot.spotter``: an adaptive threshold, a return-to-rest check and
  micro-expression interval rules that turn the signal into spots (onset, apex, offset) as
  they end, streaming (``Spotter``) or offline (``spot_series``) with the same code;
* ``edge_mer.spot.truth``: spotting truth from the generator's CSV or CAS(ME)^2 / SAMM
  long-video annotation sheets;
* ``edge_mer.spot.metrics``: the MEGC spotting score (IoU >= 0.5, precision, recall, F1)
  and its bootstrap interval over videos;
* ``edge_mer.spot.video``: spotting a video file or frame folder (``edge-mer spot``);
  ``edge_mer.spot.plot``: the signal as a PNG; ``edge_mer.spot.tables``: reading the sheets.

Nothing here imports torch (a device runs it with numpy and OpenCV). This package file
imports nothing, so that the CLI can register ``edge-mer spot`` without loading OpenCV.
"""
