"""Moved to ``semipairs.sources.hf_datasets`` (the ``hf:`` image source; Hub push/pull is ``semipairs.hub``);
this path stays for one release."""

from semipairs.sources.hf_datasets import HubImageSource, parse_hf_spec  # noqa: F401
