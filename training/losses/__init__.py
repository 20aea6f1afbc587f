"""Losses, one per file."""

from training.losses.byol import byol_loss
from training.losses.info_nce import info_nce
from training.losses.multi_positive import multi_positive_nce
from training.losses.neg_cosine import negative_cosine
from training.losses.reco import reco_global, reco_local
from training.losses.supcon import supcon

__all__ = ["byol_loss", "info_nce", "multi_positive_nce", "negative_cosine", "reco_global", "reco_local", "supcon"]
