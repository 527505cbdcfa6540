"""Data on the device: :class:`ResidentLoader` (the whole data set resident), :class:`Prefetcher` (stream with
overlap), and built-in corpora that need no network."""

from tangtoc.data.corpus import (
    BYTE_VOCAB,
    ByteCorpus,
    decode,
    encode,
    lm_windows,
    stdlib_corpus,
    synthetic_classification,
    synthetic_regression,
    text_corpus,
)
from tangtoc.data.prefetch import Prefetcher
from tangtoc.data.resident import ResidentLoader, check_fits
from tangtoc.errors import CorpusError, DataTooLargeError

__all__ = [
    "BYTE_VOCAB",
    "ByteCorpus",
    "CorpusError",
    "DataTooLargeError",
    "Prefetcher",
    "ResidentLoader",
    "check_fits",
    "decode",
    "encode",
    "lm_windows",
    "stdlib_corpus",
    "synthetic_classification",
    "synthetic_regression",
    "text_corpus",
]
