"""Moved to ``training.decoded_batches`` (the decoded data path); this path stays for one release."""

from training.decoded_batches import (  # noqa: F401
    PAIR,
    PAIR_MODES,
    SAME_IMAGE,
    Batch,
    PairRows,
    plan_epoch,
    resolve_pairs,
    samples_per_epoch,
)
