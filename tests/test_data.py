"""tangtoc.data: ResidentLoader order, resumption and sharding; Prefetcher; the corpora."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch

from tangtoc.data import (
    CorpusError,
    DataTooLargeError,
    Prefetcher,
    ResidentLoader,
    check_fits,
    decode,
    encode,
    lm_windows,
    stdlib_corpus,
    synthetic_classification,
    synthetic_regression,
    text_corpus,
)
from tangtoc.data import corpus as corpus_mod


def _ids(loader: ResidentLoader) -> list[int]:
    """Sample ids of one epoch, for a loader built on x = arange."""
    return [int(v) for (xb,) in loader for v in xb]


@pytest.mark.parametrize(
    ("n", "bs", "drop_last", "expected_len"), [(10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3)]
)
def test_every_sample_once_per_epoch(n: int, bs: int, drop_last: bool, expected_len: int) -> None:
    loader = ResidentLoader(torch.arange(n), batch_size=bs, drop_last=drop_last, device="cpu")
    assert len(loader) == expected_len
    ids = _ids(loader)
    assert len(ids) == (expected_len * bs if drop_last else n)
    assert len(set(ids)) == len(ids)
    assert loader.epoch == 1 and loader.position == 0


def test_order_depends_only_on_seed_and_epoch() -> None:
    a = ResidentLoader(torch.arange(50), batch_size=8, seed=3, device="cpu")
    b = ResidentLoader(torch.arange(50), batch_size=8, seed=3, device="cpu")
    first, second = _ids(a), _ids(a)
    assert first != second  # a new order each epoch
    assert _ids(b) == first and _ids(b) == second
    c = ResidentLoader(torch.arange(50), batch_size=8, seed=4, device="cpu")
    assert _ids(c) != first
    b.set_epoch(0)
    assert _ids(b) == first


def test_no_shuffle_yields_views_in_order() -> None:
    x = torch.arange(10)
    loader = ResidentLoader(x, torch.arange(10) * 2, batch_size=4, shuffle=False, device="cpu")
    batches = list(loader)
    assert [b[0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(batches[0][1], torch.tensor([0, 2, 4, 6]))
    assert batches[0][0].data_ptr() == x.data_ptr()  # resident on the CPU already: no copy at all


def test_resume_from_saved_position_continues_the_same_sequence() -> None:
    straight = ResidentLoader(torch.arange(20), batch_size=3, seed=1, device="cpu")
    reference = _ids(straight) + _ids(straight)
    run = ResidentLoader(torch.arange(20), batch_size=3, seed=1, device="cpu")
    it = iter(run)
    seen = [int(v) for _ in range(4) for v in next(it)[0]]
    state = run.state_dict()
    assert state["position"] == 4 and state["epoch"] == 0
    resumed = ResidentLoader(torch.arange(20), batch_size=3, seed=1, device="cpu")
    resumed.load_state_dict(state)
    seen += _ids(resumed) + _ids(resumed)
    assert seen == reference


def test_load_state_dict_refuses_another_configuration() -> None:
    state = ResidentLoader(torch.arange(20), batch_size=3, device="cpu").state_dict()
    other = ResidentLoader(torch.arange(20), batch_size=4, device="cpu")
    with pytest.raises(ValueError, match=r"the saved batch_size is 3 but this loader has 4"):
        other.load_state_dict(state)


def test_shards_are_disjoint_equal_and_cover_the_data() -> None:
    shards = [
        ResidentLoader(torch.arange(11), batch_size=2, rank=r, world_size=3, seed=5, device="cpu") for r in range(3)
    ]
    ids = [_ids(s) for s in shards]
    assert [len(i) for i in ids] == [3, 3, 3]  # 11 // 3: the two leftover samples are dropped, evenly
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 9
    seen = set().union(*(_ids(shards[0]) for _ in range(20)))
    assert 9 in seen and 10 in seen  # the leftover samples differ by epoch: none is left out for good


def test_moves_to_another_device_once() -> None:
    loader = ResidentLoader(torch.randn(6, 2), torch.arange(6), batch_size=4, device="meta")
    assert all(t.device.type == "meta" for t in loader.tensors)
    xb, yb = next(iter(loader))
    assert xb.device.type == "meta" and xb.shape == (4, 2) and yb.shape == (4,)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {"batch_size": 2}, r"needs at least one tensor"),
        ((torch.zeros(3), torch.zeros(4)), {"batch_size": 2}, r"same first dimension, got sizes \[3, 4\]"),
        ((torch.zeros(3),), {"batch_size": 0}, r"batch_size must be a positive int, got 0"),
        ((torch.zeros(3),), {"batch_size": 1, "rank": 2, "world_size": 2}, r"need 0 <= rank < world_size"),
        # Checked on construction: NumPy's SeedSequence refused them only when the first epoch was drawn.
        ((torch.zeros(3),), {"batch_size": 1, "seed": -1}, r"seed must be an int >= 0, got -1\. Fix: .*seed=0"),
        ((torch.zeros(3),), {"batch_size": 1, "seed": 1.5}, r"seed must be an int >= 0, got 1\.5\."),
        ((torch.zeros(3),), {"batch_size": 1, "seed": True}, r"seed must be an int >= 0, got True\."),
    ],
)
def test_bad_arguments_are_named(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResidentLoader(*args, device="cpu", **kwargs)


def test_a_numpy_seed_is_taken_as_an_int() -> None:
    import numpy as np

    loader = ResidentLoader(torch.arange(6), batch_size=2, seed=np.int64(3), device="cpu")
    assert type(loader.state_dict()["seed"]) is int  # plain ints: loadable with weights_only=True
    assert _ids(loader) == _ids(ResidentLoader(torch.arange(6), batch_size=2, seed=3, device="cpu"))


def test_too_large_for_the_device_says_what_to_use_instead() -> None:
    with pytest.raises(DataTooLargeError, match=r"needs 3.00 GiB on cuda:0.*Prefetcher\(DataLoader"):
        check_fits(3 * 2**30, 4 * 2**30, torch.device("cuda", 0), 0.5)
    check_fits(2 * 2**30, 4 * 2**30, torch.device("cuda", 0), 0.5)
    check_fits(2**40, None, torch.device("mps"), 0.5)  # free memory unknown: nothing to check against
    with pytest.raises(MemoryError):  # the builtin a user already catches
        check_fits(10, 10, torch.device("cpu"), 0.5)


def test_prefetcher_passes_through_on_cpu_and_converts_numpy() -> None:
    import numpy as np

    batches = [(np.ones((2, 3), dtype=np.float32), torch.tensor([1, 2]))] * 3
    out = list(Prefetcher(batches, "cpu"))
    assert len(out) == 3 and len(Prefetcher(batches, "cpu")) == 3
    assert isinstance(out[0][0], torch.Tensor) and out[0][0].shape == (2, 3)


@pytest.mark.cuda
def test_prefetcher_on_cuda_delivers_every_batch_on_the_device() -> None:
    data = [(torch.full((64, 8), float(i)), torch.tensor([i])) for i in range(20)]
    out = [(x.sum().item(), y.item(), x.device.type) for x, y in Prefetcher(data, "cuda")]
    assert out == [(64 * 8 * float(i), i, "cuda") for i in range(20)]


def test_stdlib_corpus_is_deterministic_and_capped() -> None:
    a = stdlib_corpus(max_bytes=200_000)
    b = stdlib_corpus(max_bytes=200_000)
    assert a.train.numel() + a.val.numel() == 200_000
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.val.numel() == 20_000 and a.files >= 1 and a.vocab_size == 256
    assert "standard library" in a.source
    assert "def " in decode(a.train)


def test_text_corpus_from_a_folder_skips_binaries_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file " * 20)
    (tmp_path / "a.txt").write_text("first file " * 20)
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2" * 100)
    (tmp_path / ".hidden").write_text("secret")
    c = text_corpus(tmp_path, val_fraction=0.25)
    text = decode(torch.cat([c.train, c.val]))
    assert c.files == 2
    assert text.startswith("first file") and "second file" in text
    assert "secret" not in text and "\0" not in text


def test_text_corpus_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"no such file or folder: '.*nowhere'"):
        text_corpus(tmp_path / "nowhere")
    (tmp_path / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(CorpusError, match=r"no text found"):
        text_corpus(tmp_path)
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(CorpusError, match=r"too few to split"):
        text_corpus(tmp_path / "short.txt")


def _corpus_in_a_thread(path: Path, **kwargs: Any) -> Any:
    """text_corpus(path), or pytest.fail when it is still running after 20 s (it waits on a FIFO forever)."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(text_corpus(path, **kwargs)), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        for fifo in path.glob("*pipe*"):  # a writer's open releases the reader blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"text_corpus({path}) was still waiting after 20 s")
    return out[0] if out else None


def test_a_fifo_in_a_folder_is_skipped_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text " * 20)
    os.mkfifo(tmp_path / "pipe")
    c = _corpus_in_a_thread(tmp_path, val_fraction=0.25)
    assert c is not None and c.files == 1 and decode(c.train).startswith("some text")


def test_a_broken_link_in_a_folder_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text " * 20)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert text_corpus(tmp_path, val_fraction=0.25).files == 1


def test_a_fifo_or_device_named_alone_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CorpusError, match=r"pipe is a FIFO, not a text file or a folder: reading it could wait"):
        text_corpus(tmp_path / "pipe")
    with pytest.raises(CorpusError, match=r"/dev/zero is a character device, not a text file or a folder"):
        text_corpus("/dev/zero")


def test_only_the_bytes_needed_are_read(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.write(b"line of text\n" * 20_000)  # 260 kB of text, then a 512 MiB hole (no disk space taken)
        f.seek(512 * 2**20)
        f.write(b"end\n")
    tracemalloc.start()
    try:
        c = text_corpus(big, max_bytes=100_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c.train.numel() + c.val.numel() == 100_000
    assert peak < 2 * 2**20, f"reading 100 kB of a 512 MiB file took {peak / 2**20:.0f} MiB at its peak"


def test_a_binary_file_named_alone_is_left_out_as_in_a_folder(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"abc\0" * 1000)
    with pytest.raises(
        CorpusError, match=r"no text found in .*model\.bin: 1 binary file\b.*in a folder or named alone"
    ):
        text_corpus(tmp_path / "model.bin")


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod cannot take read permission away from root, who runs these tests in CI: refuse the open instead.
    secret = tmp_path / "secret.txt"
    secret.write_text("some text " * 20)
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path) == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(CorpusError, match=r"cannot read .*secret\.txt: Permission denied\. Fix: make it readable"):
        text_corpus(tmp_path)


def test_stdlib_corpus_explains_a_zipped_stdlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(corpus_mod, "stdlib_root", lambda: tmp_path / "python311.zip")
    with pytest.raises(CorpusError, match=r"not a folder here .*Fix: pass a text file or folder"):
        stdlib_corpus()


def test_lm_windows_shift_by_one() -> None:
    x, y = lm_windows(encode("abcdefghij"), 4)
    assert x.shape == (2, 4) and x.dtype == torch.int64
    assert decode(x[0]) == "abcd" and decode(y[0]) == "bcde" and decode(x[1]) == "efgh"
    xs, _ = lm_windows(encode("abcdefghij"), 4, stride=1)
    assert xs.shape == (6, 4)
    with pytest.raises(CorpusError, match=r"3 tokens cannot make one window of block_size 4"):
        lm_windows(encode("abc"), 4)


def test_encode_gives_the_token_ids_an_embedding_takes() -> None:
    ids = encode("tă")
    assert ids.dtype == torch.int64 and ids.tolist() == [116, 196, 131]
    assert torch.nn.Embedding(256, 2)(ids).shape == (3, 2)  # uint8 ids were refused by the embedding
    assert encode("").shape == (0,)


def test_decode_replaces_invalid_utf8() -> None:
    assert decode(torch.tensor([104, 105, 255], dtype=torch.uint8)) == "hi\ufffd"
    assert decode(encode("tăng tốc")) == "tăng tốc"


def test_synthetic_data_is_learnable_and_seeded() -> None:
    x, y = synthetic_classification(500, features=8, classes=4, seed=1)
    assert x.shape == (500, 8) and y.dtype == torch.int64 and set(y.tolist()) == {0, 1, 2, 3}
    x2, _ = synthetic_classification(500, features=8, classes=4, seed=1)
    assert torch.equal(x, x2)
    xr, yr = synthetic_regression(2000, features=4, noise=0.1, seed=0)
    w = torch.linalg.lstsq(xr, yr).solution
    assert ((xr @ w - yr) ** 2).mean().item() == pytest.approx(0.01, rel=0.2)  # noise ** 2: learnable
    with pytest.raises(ValueError, match=r"classes >= 2"):
        synthetic_classification(10, classes=1)
