"""Datasets: the synthetic generator (``synth``) and, later, the loaders of the real datasets."""
