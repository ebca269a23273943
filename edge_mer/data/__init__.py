"""Datasets: the loaders of the real datasets' layouts and sheets, their labels, and the writer of synthetic
datasets in those layouts (``synthetic``, rendered by ``edge_mer.synth``)."""
