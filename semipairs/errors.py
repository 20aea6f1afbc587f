"""Exceptions of semipairs: each names the file, key or field at fault, so a user can act on it."""

from __future__ import annotations


class SemipairsError(Exception):
    """Base class of every error semipairs raises on purpose."""


class FormatVersionError(SemipairsError):
    """A manifest declares a format or format_version this reader does not know."""


class ManifestError(SemipairsError):
    """A semipairs.json is missing, unreadable or fails validation."""


class StoreError(SemipairsError):
    """A store, dataset or version cannot be found, or a version would be overwritten."""


class SourceError(SemipairsError):
    """An image source spec is invalid or its data cannot be read."""


class PairsError(SemipairsError):
    """A pair list is malformed: missing columns, unknown keys, self pairs."""


class ShardReadError(SemipairsError):
    """A shard cannot be read (truncated, corrupt, missing); the message names the shard."""


class DivergedError(SemipairsError):
    """Training produced a non-finite loss, gradient or weight: the run stops, its last good checkpoint stays."""


class InvalidValueError(SemipairsError, ValueError):
    """A value a user gave (a flag, a config key, a pair list, a file's content) cannot be used. Also a
    ValueError, so pydantic validators and callers that catch ValueError treat it as one; a plain
    ValueError is a bug and keeps its traceback."""
