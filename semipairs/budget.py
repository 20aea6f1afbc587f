"""Memory budgets: how much RAM a decoded image array (``decoded.py``) or a faiss index (``curate``) may take.
One rule for both: a quarter of physical RAM unless a ``--...-budget-gb`` flag says otherwise."""

from __future__ import annotations

import os

DEFAULT_BUDGET_SHARE = 0.25  # of physical RAM


def default_budget_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_BUDGET_SHARE)
    except (ValueError, OSError, AttributeError):  # not a POSIX system: a conservative 2 GiB
        return 2 << 30


def budget_from_gb(gb: float | None) -> int | None:
    """A ``--decode-budget-gb`` / ``--index-budget-gb`` flag as bytes (None keeps the default share of RAM)."""
    return None if gb is None else int(gb * 2**30)
