"""The error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or prepared shards; the message names the file (and line or row) and the fix."""
