"""Telling a damaged checkpoint from a dangerous one, and catching damage that still loads.

A file ``torch.load(weights_only=True)`` refuses is either damaged (cut short, bytes flipped on a disk, in a copy or a
transfer) or it holds Python objects that could run code when unpickled. PyTorch raises the same
``UnpicklingError`` for both, with advice to turn the safety off; random bytes get that advice too. So before
anything is said about code, the container is checked here (:func:`check_container`): a file that is neither a zip
archive nor a pickle, a zip whose pickle fails the CRC-32 that ``torch.save`` wrote beside it, or a pickle that does
not parse (read with ``pickletools``, which never builds an object) is damaged. Only a well-formed pickle that names
a forbidden object is reported as one that could run code (:func:`refusal`), and never with advice to load it
unsafely when it carries tangtoc's format marker: tangtoc writes tensors and plain data only.

Flipped bytes inside a tensor's storage load without any error. So :func:`tensor_checksums` takes a CRC-32 of
every tensor's bytes when a checkpoint is written (about 4 GB/s on one core, over the CPU copy being saved), stored
in the checkpoint under :data:`CHECKSUMS`, and :func:`verify` compares them after loading. Checkpoints written
before checksums existed have none and load unverified.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import torch

from tangtoc.errors import CheckpointError, CorruptCheckpointError
from tangtoc.walk import named_leaves

CHECKSUMS = "tensor_crc32"  # {path in the state: CRC-32 of the tensor's bytes}

_HINT = (
    "Fix: resume=True skips it and continues from the newest checkpoint that verifies; to use this folder's "
    "older checkpoints by hand, delete this file; or start afresh with another checkpoint_dir."
)


def tensor_checksums(state: Any) -> dict[str, int]:
    """The CRC-32 of every CPU tensor's bytes in ``state``, by its path (``['model']['fc1.weight']``)."""
    return {path: _crc(t) for path, t in _tensors(state)}


def verify(state: dict[str, Any], path: Path) -> None:
    """Raise :class:`~tangtoc.errors.CorruptCheckpointError` unless every tensor of the loaded ``state`` has the
    checksum written with it. A state without checksums (written before they existed) passes unverified."""
    expected = state.get(CHECKSUMS)
    if expected is None:
        return
    found = tensor_checksums({k: v for k, v in state.items() if k != CHECKSUMS})
    bad = sorted(p for p in expected.keys() | found.keys() if expected.get(p) != found.get(p))
    if bad:
        named = ", ".join(f"state{p}" for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise damaged(
            path,
            f"{len(bad)} of its {len(expected)} tensors differ from the checksums written with them ({named}): "
            "bytes changed after tangtoc wrote it (on the disk, in a copy or a transfer)",
        )


def unloadable(value: Any) -> list[str]:
    """The objects in ``value`` that ``torch.load(weights_only=True)`` refuses (``"math.cos"``), found by pickling it
    without its tensors (cheap: the containers and plain values only)."""

    def skeleton(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return None
        if type(obj) in (dict, collections.OrderedDict):
            return {k: skeleton(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return [skeleton(v) for v in obj]
        return obj

    buffer = io.BytesIO()
    torch.save(skeleton(value), buffer)
    buffer.seek(0)
    return torch.serialization.get_unsafe_globals_in_checkpoint(buffer)


def check_container(path: Path) -> None:
    """Raise :class:`~tangtoc.errors.CorruptCheckpointError` when ``path`` is neither a zip archive (what
    ``torch.save`` writes) nor a pickle (its legacy format), when the archive's pickle fails the CRC-32 stored
    with it, or when that pickle does not parse. Cheap: only the pickle is read, not the tensors."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}.") from e
    with f:
        problem = _damage(f)
    if problem is not None:
        raise damaged(path, problem)


def refusal(path: Path, error: pickle.UnpicklingError, marker: str) -> CheckpointError:
    """What to say about an intact pickle that ``weights_only=True`` refused: it names an object that could run
    code. The error (with PyTorch's reason) to raise; ``marker`` is the format string tangtoc's checkpoints hold."""
    reason = _reason(str(error))
    if _marked(path, marker):
        return CheckpointError(
            f"refused to load {path}: it claims to be a tangtoc checkpoint but holds Python objects other than "
            f"tensors and plain data, and unpickling them could run code ({reason}). tangtoc never writes such "
            "objects, so the file was changed or replaced after it was written: do not load it with "
            "weights_only=False. Fix: use an older checkpoint from a source you trust, and find out who wrote "
            "this one."
        )
    return CheckpointError(
        f"refused to load {path}: it holds Python objects other than tensors and plain data, and unpickling them "
        f"could run code ({reason}). tangtoc loads checkpoints with torch.load(weights_only=True), and did not "
        "write this file. If you made it yourself and trust it, load it with torch.load(path, weights_only=False) "
        "and save its tensors again."
    )


def corrupt(path: Path, error: BaseException) -> CorruptCheckpointError:
    """A load that failed on an intact-looking container: the file is damaged where only loading shows it (a
    tensor record of the wrong size, a storage of an unknown kind)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return damaged(path, f"PyTorch cannot read it ({type(error).__name__}: {first})")


def damaged(path: Path, reason: str) -> CorruptCheckpointError:
    """The error for a checkpoint whose bytes are damaged, ``reason`` saying how."""
    return CorruptCheckpointError(
        f"checkpoint {path} is corrupt or truncated: {reason}. {_HINT}", path=path, reason=reason
    )


def _tensors(state: Any) -> list[tuple[str, torch.Tensor]]:
    return [
        (p, v) for p, v in named_leaves(state, "", set()) if isinstance(v, torch.Tensor) and v.layout == torch.strided
    ]


def _crc(t: torch.Tensor) -> int:
    flat = t.detach().resolve_conj().resolve_neg().reshape(-1)  # a lazy conj/neg view has no bytes of its own
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return zlib.crc32(flat.view(torch.uint8).numpy())  # its bytes, whatever the dtype (bfloat16 included)


def _damage(f: BinaryIO) -> str | None:
    try:
        head = f.read(4)
        if not zipfile.is_zipfile(f):
            if head == b"PK\x03\x04":
                return "it starts as a zip archive but the archive's directory at its end is missing: it was cut short"
            if head[:1] != b"\x80":  # every pickle of protocol 2 or later starts with PROTO
                return "it is neither a zip archive (what torch.save writes) nor a pickle"
            f.seek(0)
            return _unparsable(f)  # read up to the first pickle's STOP only
        with zipfile.ZipFile(f) as archive:
            return _pickle_damage(archive, f)
    except (OSError, zipfile.BadZipFile, EOFError, struct.error) as e:
        return f"its zip archive cannot be read ({type(e).__name__}: {e})"


def _pickle_damage(archive: zipfile.ZipFile, f: BinaryIO) -> str | None:
    found = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
    if len(found) != 1 or found[0].compress_type != zipfile.ZIP_STORED:
        return "its zip archive holds no data.pkl record, so it was not written by torch.save"
    data = _stored(f, found[0])
    # torch.save writes a CRC of 0 when its CRC computing is turned off (set_crc32_options): nothing to check then.
    if found[0].CRC and zlib.crc32(data) != found[0].CRC:
        return f"its pickle ({found[0].filename}) fails the CRC-32 stored beside it"
    return _unparsable(data)


def _stored(f: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    """The bytes of an uncompressed member, read past its local header (ZipFile.read would refuse a zero CRC)."""
    f.seek(info.header_offset)
    header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    return f.read(info.compress_size)


def _unparsable(data: bytes | BinaryIO) -> str | None:
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # genops raises ValueError, but also whatever a garbled argument trips on
        return f"its pickle does not parse ({e})"
    return None


def _reason(message: str) -> str:
    """PyTorch's line that names the refused object, out of its paragraphs of advice."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines[-1:] or ["UnpicklingError"])[0].rstrip(".")


def _marked(path: Path, marker: str) -> bool:
    """Whether the pickle in ``path`` holds ``marker``, read without unpickling anything."""
    try:
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
            data = _stored(f, info)
    except (OSError, zipfile.BadZipFile, StopIteration):
        return False
    return any(arg == marker for _, arg, _ in pickletools.genops(data))
