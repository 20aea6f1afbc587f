"""Moved to ``semipairs.checkpoint`` (the checkpoint contract curation and training share); this path stays
for one release."""

from semipairs.checkpoint import (  # noqa: F401
    CHECKPOINT_VERSION,
    backbone_checkpoint,
    backbone_from_state,
    load_backbone,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
