"""Moved to ``semipairs.arrays`` (``curation.vectors`` is the embeddings' home); this path stays for one release."""

from semipairs.arrays import BLOCK, Parts, degenerate_rows, normalise_rows_, open_npy, without_self  # noqa: F401
