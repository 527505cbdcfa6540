"""Built-in data that needs no network: byte-level text corpora and synthetic tensors.

Text is tokenised as raw bytes (vocabulary 256, no tokenizer to download): the model sees exactly the bytes of
the files. The standard library's own source files are on every machine that runs Python, which makes them a
corpus every test and demonstration can count on; any other text file or folder works the same way.
"""

from __future__ import annotations

import errno
import numbers
import os
import stat
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from tangtoc.data.checks import is_count
from tangtoc.device import DeviceLike, resolve
from tangtoc.errors import CorpusError

BYTE_VOCAB = 256
DEFAULT_MAX_BYTES = 4 * 2**20
# Folders of the standard library left out: installed packages are not the standard library, and the test
# suites are full of deliberately malformed files (bad encodings, binary data).
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_SNIFF_BYTES = 8192


@dataclass(frozen=True, slots=True)
class ByteCorpus:
    """A text corpus as byte tokens (``uint8``), split into a training and a validation part.

    ``val`` is the last ``val_fraction`` of the bytes, so no validation text appears in training.
    """

    train: torch.Tensor
    val: torch.Tensor
    source: str  # where the text came from, for reports
    files: int  # how many files contributed

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB

    def windows(
        self, block_size: int, *, split: str = "train", stride: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` for next-token prediction on ``split`` (``"train"`` or ``"val"``)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        return lm_windows(self.train if split == "train" else self.val, block_size, stride=stride)


def lm_windows(
    tokens: torch.Tensor, block_size: int, *, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a 1-D token stream into ``(inputs, targets)`` of shape ``(windows, block_size)``, int64.

    Window ``i`` starts at ``i * stride`` (default ``block_size``: no overlap); ``targets`` is ``inputs``
    shifted by one token. Both are views of one int64 copy of ``tokens``.
    """
    if tokens.dim() != 1:
        raise ValueError(f"lm_windows needs a 1-D token stream, got shape {tuple(tokens.shape)}.")
    if not is_count(block_size, 1):
        raise ValueError(f"lm_windows: block_size must be an int > 0, got {block_size!r}.")
    stride = block_size if stride is None else stride
    if not is_count(stride, 1):
        raise ValueError(f"lm_windows: stride must be an int > 0, got {stride!r}.")
    if tokens.numel() < block_size + 1:
        raise CorpusError(
            f"lm_windows: {tokens.numel()} tokens cannot make one window of block_size {block_size} (it needs "
            f"{block_size + 1}). Fix: use more text or a smaller block_size."
        )
    chunks = tokens.long().unfold(0, block_size + 1, stride)  # (windows, block_size + 1), a view
    return chunks[:, :-1], chunks[:, 1:]


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as token ids, a 1-D ``int64`` tensor (the byte-level tokenisation). ``int64``, the
    dtype an embedding takes, so that ``model.generate(encode(text)[None], n)`` works as it is; the corpora keep
    their bytes as ``uint8`` (8x less memory) and :func:`lm_windows` widens the windows."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(tokens: torch.Tensor) -> str:
    """Text from byte tokens; bytes that are not valid UTF-8 (a model can sample those) become U+FFFD."""
    return bytes(tokens.detach().to("cpu", torch.uint8).tolist()).decode("utf-8", errors="replace")


# Files that are not regular: reading one could wait forever (a FIFO with no writer) or never end (/dev/zero).
_SPECIAL = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
            (stat.S_ISBLK, "block device"))  # fmt: skip


def _special(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is neither a regular file nor a folder; ``None`` when it is."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for is_kind, name in _SPECIAL if is_kind(mode)), "special file")


def _head(path: Path, limit: int) -> bytes | str:
    """The first ``limit`` bytes of ``path`` (never more: a 2 GB file under a 100 kB cap reads 100 kB), or why
    it is left out: ``"binary file"`` (a NUL byte in its first 8 KiB), ``"empty file"``, ``"FIFO"``...

    A folder may hold anything, so what is not a regular file is found by ``stat`` before it is opened, and the
    open does not block, in case a FIFO took the file's place in between."""
    try:
        kind = _special(os.stat(path).st_mode)
        if kind is not None:
            return kind
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            kind = _special(os.fstat(fd).st_mode)
            if kind is not None:
                return kind
            data = f.read(max(limit, _SNIFF_BYTES))
    except (FileNotFoundError, NotADirectoryError):
        return "broken link"  # the walk listed it, but it points nowhere (or vanished since)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "broken link"
        raise CorpusError(
            f"cannot read {path}: {e.strerror}. Fix: make it readable (`chmod +r`), or point at a folder without it."
        ) from e
    if b"\0" in data[:_SNIFF_BYTES]:
        return "binary file"
    return data[:limit] if data else "empty file"


def _walk(root: Path, skip: frozenset[str]) -> list[Path]:
    """Every file under ``root`` in a deterministic order: sorted relative paths, hidden entries left out."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files) if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _build(files: list[Path], source: str, max_bytes: int, val_fraction: float) -> ByteCorpus:
    if not is_count(max_bytes, 1):
        raise ValueError(f"max_bytes must be an int > 0, got {max_bytes!r}.")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}.")
    buf = bytearray()
    used = 0
    left_out: Counter[str] = Counter()
    for path in files:
        if len(buf) >= max_bytes:
            break
        data = _head(path, max_bytes - len(buf))
        if isinstance(data, str):
            left_out[data] += 1
            continue
        buf += data
        if len(buf) < max_bytes:
            buf += b"\n"  # files end where the next begins; a newline keeps lines from running together
        used += 1
    if not buf:
        found = ", ".join(f"{n} {what}{'s' if n > 1 else ''}" for what, n in sorted(left_out.items())) or "no files"
        raise CorpusError(
            f"no text found in {source}: {found}. A corpus is text: binary files (a NUL byte in their first 8 KiB), "
            "empty files, and FIFOs, sockets and devices (whose reading may never end) are left out, in a folder or "
            "named alone. Fix: point at a text file or a folder of them."
        )
    tokens = torch.frombuffer(buf, dtype=torch.uint8)
    n_val = int(len(tokens) * val_fraction)
    if n_val < 2 or len(tokens) - n_val < 2:
        raise CorpusError(
            f"{source} has {len(tokens)} bytes, too few to split with val_fraction={val_fraction}. "
            "Fix: use more text or another val_fraction."
        )
    return ByteCorpus(train=tokens[:-n_val], val=tokens[-n_val:], source=source, files=used)


def stdlib_root() -> Path:
    """The folder of the Python standard library's source files."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(*, max_bytes: int = DEFAULT_MAX_BYTES, val_fraction: float = 0.1) -> ByteCorpus:
    """The ``.py`` files of this Python's standard library (test suites and installed packages left out), in
    sorted path order, concatenated up to ``max_bytes``. The same Python installation always gives the same
    bytes; another Python version gives other bytes."""
    root = stdlib_root()
    if not root.is_dir():
        raise CorpusError(
            f"the standard library is not a folder here ({root}; a zipped or frozen Python). "
            "Fix: pass a text file or folder with text_corpus(path)."
        )
    files = [p for p in _walk(root, _STDLIB_SKIP) if p.suffix == ".py"]
    return _build(files, f"Python {sysconfig.get_python_version()} standard library ({root})", max_bytes, val_fraction)


def text_corpus(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES, val_fraction: float = 0.1
) -> ByteCorpus:
    """A corpus from a text file, or from every text file under a folder (sorted paths; hidden files left out),
    concatenated up to ``max_bytes``; only the bytes needed are read.

    Binary files (a NUL byte in their first 8 KiB), empty files, FIFOs, sockets, devices and broken links are left
    out, whether in a folder or named alone (a binary alone then gives "no text found"). A FIFO or device named
    alone is refused before it is opened. Raises :class:`CorpusError` saying what was found instead of text."""
    root = Path(path).expanduser()
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise CorpusError(
            f"no such file or folder: {str(root)!r}. Fix: pass a text file or a folder of text files."
        ) from None
    except OSError as e:
        raise CorpusError(f"cannot read {root}: {e.strerror}. Fix: pass a text file or folder you can read.") from e
    kind = _special(mode)
    if kind is not None:
        raise CorpusError(
            f"{root} is a {kind}, not a text file or a folder: reading it could wait forever or never end. Fix: "
            "save the text to a file and pass that."
        )
    files = _walk(root, frozenset({"__pycache__"})) if stat.S_ISDIR(mode) else [root]
    return _build(files, str(root), max_bytes, val_fraction)


def synthetic_classification(
    n: int, *, features: int = 32, classes: int = 10, seed: int = 0, device: DeviceLike | None = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``n`` float32 feature vectors and int64 labels given by a fixed random linear teacher
    (``y = argmax(x @ W)``), so a model can learn them to high accuracy.

    Created directly on ``device`` (seed 4.3: no transfer) with a generator there: the same seed gives the same
    data on the same kind of device.
    """
    if not (is_count(n, 1) and is_count(features, 1) and is_count(classes, 2)):
        raise ValueError(f"need n > 0, features > 0, classes >= 2; got n={n}, features={features}, classes={classes}.")
    dev = resolve(device)
    g = torch.Generator(dev).manual_seed(seed)
    x = torch.randn(n, features, generator=g, device=dev)
    teacher = torch.randn(features, classes, generator=g, device=dev)
    return x, (x @ teacher).argmax(dim=1)


def synthetic_regression(
    n: int,
    *,
    features: int = 32,
    outputs: int = 1,
    noise: float = 0.1,
    seed: int = 0,
    device: DeviceLike | None = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``y = x @ W + noise * N(0, 1)`` with a fixed random ``W``; float32, ``y`` of shape
    ``(n, outputs)``. The best possible mean squared error is ``noise ** 2``. Created on ``device`` like
    :func:`synthetic_classification`."""
    if not (is_count(n, 1) and is_count(features, 1) and is_count(outputs, 1)) or not noise >= 0:
        raise ValueError(
            f"need n, features, outputs > 0 and noise >= 0; got n={n}, features={features}, outputs={outputs}, "
            f"noise={noise}."
        )
    dev = resolve(device)
    g = torch.Generator(dev).manual_seed(seed)
    x = torch.randn(n, features, generator=g, device=dev)
    w = torch.randn(features, outputs, generator=g, device=dev) / features**0.5
    return x, x @ w + noise * torch.randn(n, outputs, generator=g, device=dev)
