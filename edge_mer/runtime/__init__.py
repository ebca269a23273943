"""What runs on a device: model artefacts, inference backends, TensorRT engines.

Nothing under ``edge_mer.runtime`` imports torch at import time; only the
``torch`` backend does, when it is chosen.
"""
