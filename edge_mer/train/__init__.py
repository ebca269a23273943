"""Training and evaluation of the MMT (torch): LOSO folds, the MEGC protocols, torchrun."""
