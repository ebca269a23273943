"""edge-mer: on-device facial micro-expression recognition."""

__version__ = "0.1.0"
