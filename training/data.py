"""Moved to ``training.streamed`` (the streamed data path); this path stays for one release."""

from training.streamed import SePPViews, check_pair_keys  # noqa: F401
