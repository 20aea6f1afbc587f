"""Moved to ``semipairs.backbones`` (the checkpoint contract curation and training share); this path stays
for one release."""

from semipairs.backbones import BackboneSpec, backbone_state, build_backbone  # noqa: F401
