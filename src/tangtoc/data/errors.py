"""The typed errors of :mod:`tangtoc.data`; each also subclasses the built-in exception a user would catch."""

from __future__ import annotations

from tangtoc.errors import TangtocError


class DataTooLargeError(TangtocError, MemoryError):
    """A data set asked to live on a device does not fit in the memory it may take there."""


class CorpusError(TangtocError, ValueError):
    """A text corpus could not be built: the path holds no readable text, or the split is impossible."""
