"""Checkpoint folders two runs share, and damaged checkpoints (issue 13 items 2 and 5).

Two runs on one folder used to destroy each other (each save deleted the other's half-written file; the second
run's metrics log replaced the first's): now one writer holds the folder and the other is refused with its PID. A
damaged checkpoint used to be reported as one that could run code, with advice to load it unsafely: now damage is
told apart, tensors carry checksums, and resuming skips a damaged newest checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tangtoc.cli import main
from tangtoc.data import ResidentLoader, synthetic_classification
from tangtoc.errors import CheckpointError, CorruptCheckpointError, FolderInUseError, SkippedCheckpointWarning
from tangtoc.export import export_safetensors
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.train import fit, list_checkpoints, load_checkpoint, save_checkpoint
from tangtoc.train.checkpoint import FORMAT, VERSION, hold_checkpoint_dir
from tangtoc.train.distributed import Distributed
from tangtoc.train.folderlock import FolderLock
from tangtoc.train.result import FitEvent

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test

_DAMAGE = r"is corrupt or truncated"


def _fit(directory: Path, steps: int, **kwargs: object) -> MLP:
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3))
    x, y = synthetic_classification(100, features=8, classes=3)
    loader = ResidentLoader(x, y, batch_size=16, seed=2, device="cpu")
    fit(model, loader, loss_fn=F.cross_entropy, steps=steps, checkpoint_dir=directory, checkpoint_every=5,
        log_every=5, progress=False, device="cpu", **kwargs)  # fmt: skip
    return model


def _flip_in_record(path: Path, suffix: str, at: float = 0.5) -> None:
    """Flip one byte inside the zip record of ``path`` whose name ends with ``suffix`` (a tensor's storage is
    ``data/N``, numbered in the order the pickle meets them: ``data/0`` is the model's first; the pickle is
    ``data.pkl``), as a bad disk sector or a broken copy would."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    data = bytearray(path.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + int(info.file_size * at)] ^= 0x10
    path.write_bytes(bytes(data))


# -- item 2: one writer per folder ----------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tangtoc.train.checkpoint import hold_checkpoint_dir
    folder = Path(sys.argv[1])
    with hold_checkpoint_dir(folder, None):
        (folder / ".step-00000007.pt.inflight.tmp").write_bytes(b"a checkpoint being written")
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_a_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_blocks_nothing(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        pid = rf"PID {holder.pid} on \S+ is writing there"
        busy_message = rf"cannot train in {tmp_path}: the process with {pid}"
        with pytest.raises(FolderInUseError, match=busy_message) as busy, hold_checkpoint_dir(tmp_path, None):
            pass
        assert busy.value.pid == holder.pid
        # A save alone is refused too, and leaves the holder's half-written file alone (it used to delete it).
        with pytest.raises(FolderInUseError, match=rf"cannot write checkpoints in .*{pid}.*another folder"):
            save_checkpoint({"step": 1, "model": {}, "optimizer": {}, "rng": {}, "data": {}}, tmp_path, keep_last=1)
        assert (tmp_path / ".step-00000007.pt.inflight.tmp").exists() and not list_checkpoints(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock with the process
        holder.wait()
    with hold_checkpoint_dir(tmp_path, None):
        save_checkpoint({"step": 1, "model": {}, "optimizer": {}, "rng": {}, "data": {}}, tmp_path, keep_last=1)
    # The killed run's temporary file is removed, now that no writer can own it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tangtoc.lock", "step-00000001.pt"]


def test_a_second_fit_on_a_folder_in_use_is_refused_and_the_first_loses_nothing(tmp_path: Path) -> None:
    """The issue's two runs, as two threads: the second is refused before it writes anything; the first keeps every
    metrics line and checkpoint."""
    logged, go_on = threading.Event(), threading.Event()

    def pause_at_first_log(event: FitEvent) -> None:
        if event.kind == "log" and not logged.is_set():
            logged.set()
            assert go_on.wait(60)

    first: list[BaseException] = []

    def run_first() -> None:
        try:
            _fit(tmp_path, 20, callbacks=[pause_at_first_log])
        except BaseException as e:  # reported by the main thread
            first.append(e)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert logged.wait(60)
        before = (tmp_path / "metrics.jsonl").read_text()
        with pytest.raises(FolderInUseError, match=r"this process \(PID \d+\): another thread"):
            _fit(tmp_path, 20)
        assert (tmp_path / "metrics.jsonl").read_text() == before  # the refused run wrote nothing there
    finally:
        go_on.set()
        thread.join(60)
    assert not first, first
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step-00000020.pt"
    _fit(tmp_path, 25)  # the folder is free again once the first run has returned


def test_a_killed_fit_does_not_block_the_next_run(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint_integrity import _fit

        def die(event):
            if event.kind == "checkpoint":
                os.kill(os.getpid(), signal.SIGKILL)  # mid-run, the folder held: no clean-up of any kind

        _fit(__import__("pathlib").Path(sys.argv[1]), 20, callbacks=[die])
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005.pt"]
    _fit(tmp_path, 10)  # resumes at once: the lock died with the process
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005.pt", "step-00000010.pt"]


class _Rank(Distributed):
    """One rank of a 2-process run, with rank 0's answer to the one all_gather fed in (an injected collective)."""

    def __init__(self, rank: int, rank0_says: object) -> None:
        super().__init__(rank=rank, world_size=2, device=torch.device("cpu"), strategy="ddp")
        self.rank0_says = rank0_says
        self.gathered: list[object] = []

    def all_gather(self, obj: object) -> list[object]:
        self.gathered.append(obj)
        return [self.rank0_says if self.rank else obj, None]


def test_under_ddp_only_rank_0_locks_and_every_rank_learns_that_the_folder_is_busy(tmp_path: Path) -> None:
    # Rank 1 takes no lock (rank 0 of its own run holds it): a folder held by rank 0 does not refuse rank 1.
    with FolderLock(tmp_path, "train"), hold_checkpoint_dir(tmp_path, _Rank(1, None)):
        pass
    # Rank 0 refused: rank 1 raises the same error instead of waiting for rank 0 at its first collective.
    said = ("cannot train in the folder: the process with PID 1 on h is writing there.", 1, "h")
    with pytest.raises(FolderInUseError, match=r"PID 1 on h") as busy, hold_checkpoint_dir(tmp_path, _Rank(1, said)):
        pass
    assert (busy.value.pid, busy.value.host) == (1, "h")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        rank0 = _Rank(0, None)
        with pytest.raises(FolderInUseError, match=rf"PID {holder.pid}"), hold_checkpoint_dir(tmp_path, rank0):
            pass
        assert rank0.gathered[0][1] == holder.pid  # type: ignore[index]  # what rank 0 told the others
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_the_lock_is_reentrant_for_its_thread_only(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "train"):
        save_checkpoint({"step": 1, "model": {}, "optimizer": {}, "rng": {}, "data": {}}, tmp_path, keep_last=1)
        refused: list[BaseException] = []
        other = threading.Thread(target=lambda: _try(lambda: FolderLock(tmp_path, "train"), refused))
        other.start()
        other.join()
        assert isinstance(refused[0], FolderInUseError)
    with FolderLock(tmp_path, "train"):  # let go by the outer block
        pass


def _try(action: object, errors: list[BaseException]) -> None:
    try:
        action()  # type: ignore[operator]
    except BaseException as e:
        errors.append(e)


# -- item 5: damage, told apart from danger -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_corrupt_not_code(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "step-00000001.pt"
    path.write_bytes(random.Random(seed).randbytes(5000))
    with pytest.raises(CorruptCheckpointError, match=_DAMAGE) as damaged:
        load_checkpoint(path)
    assert "weights_only=False" not in str(damaged.value) and "run code" not in str(damaged.value)


def test_a_flipped_byte_in_a_tensor_of_a_checkpoint_written_by_fit_is_caught(tmp_path: Path) -> None:
    _fit(tmp_path, 5)
    path = tmp_path / "step-00000005.pt"
    load_checkpoint(path)  # intact, it verifies
    _flip_in_record(path, "/data/0")
    with pytest.raises(CorruptCheckpointError, match=rf"{_DAMAGE}: 1 of its \d+ tensors differ from the checksums "
                       r"written with them \(state\['model'\]\['net\.0\.weight'\]\)"):  # fmt: skip
        load_checkpoint(path)


def test_a_flipped_byte_in_the_pickle_is_caught_by_its_crc(tmp_path: Path) -> None:
    path = save_checkpoint({"step": 1, "model": {"w": torch.ones(4)}, "optimizer": {}, "rng": {}, "data": {}},
                           tmp_path, keep_last=1)  # fmt: skip
    _flip_in_record(path, "data.pkl", at=0.3)
    with pytest.raises(CorruptCheckpointError, match=rf"{_DAMAGE}: its pickle .*fails the CRC-32"):
        load_checkpoint(path)


def test_checksums_cover_every_dtype_and_shape(tmp_path: Path) -> None:
    state = {"step": 2, "model": {"bf16": torch.randn(3, 4).bfloat16(), "scalar": torch.tensor(7), "bool":
             torch.ones(2, dtype=torch.bool), "view": torch.arange(12.0).reshape(3, 4).t()}, "optimizer": {},
             "rng": {}, "data": {}}  # fmt: skip
    loaded = load_checkpoint(save_checkpoint(state, tmp_path, keep_last=1))
    assert set(loaded) == {"format", "version", *state}  # the checksums were checked and are not handed back
    for name, tensor in state["model"].items():  # type: ignore[union-attr]
        assert torch.equal(loaded["model"][name], tensor)


def test_a_checkpoint_written_before_checksums_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "step-00000003.pt"
    old = {"format": FORMAT, "version": VERSION, "step": 3, "model": {"w": torch.ones(2)}, "optimizer": {}, "rng": {},
           "data": {}}  # fmt: skip
    torch.save(old, path)
    assert load_checkpoint(path)["step"] == 3


def test_a_file_tangtoc_did_not_write_keeps_the_advice_for_its_owner(tmp_path: Path) -> None:
    """Objects in a user's own file (no tangtoc marker) are refused with the way to load it if trusted; the
    tangtoc-marked case is in test_train_checkpoint.py: there the advice is never to."""
    path = tmp_path / "mine.pt"
    torch.save({"w": torch.ones(2), "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"could run code .*did not write this file.*weights_only=False") as e:
        load_checkpoint(path)
    assert not isinstance(e.value, CorruptCheckpointError)


def test_resume_skips_a_damaged_newest_checkpoint_and_says_which(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "straight", 15)
    _fit(tmp_path / "split", 10)
    damaged = tmp_path / "split" / "step-00000010.pt"
    _flip_in_record(damaged, "/data/0")
    skipped = r"resuming from .*step-00000005\.pt, the newest checkpoint that verifies: skipped step-00000010\.pt, "
    with pytest.warns(SkippedCheckpointWarning, match=skipped + r"which is corrupt or truncated \(1 of its"):
        resumed = _fit(tmp_path / "split", 15)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # steps 6-15 trained again from step 5, exactly as without the damage


def test_resume_with_every_checkpoint_damaged_refuses_to_start_over_silently(tmp_path: Path) -> None:
    _fit(tmp_path, 5)
    (tmp_path / "step-00000005.pt").write_bytes(b"\0" * 100)
    with pytest.raises(CorruptCheckpointError, match=r"every checkpoint in .* is damaged, so there is nothing to "
                       r"resume from: step-00000005\.pt, which is corrupt"):  # fmt: skip
        _fit(tmp_path, 10)


@pytest.fixture
def damaged_gpt_run(tmp_path: Path) -> Path:
    path = save_checkpoint({"step": 1, "model": GPT(gpt_config("tiny")).state_dict(), "optimizer": {}, "rng": {},
                            "data": {}}, tmp_path, keep_last=1)  # fmt: skip
    _flip_in_record(path, "/data/0")
    return path


def test_sample_export_and_from_checkpoint_say_corrupt_too(
    damaged_gpt_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CorruptCheckpointError, match=_DAMAGE):
        GPT.from_checkpoint(damaged_gpt_run)
    with pytest.raises(CorruptCheckpointError, match=_DAMAGE):
        export_safetensors(damaged_gpt_run, tmp_path / "out.safetensors")
    assert main(["sample", str(damaged_gpt_run), "--prompt", "a", "--tokens", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "corrupt or truncated" in " ".join(err.split()) and "weights_only=False" not in err
    assert not os.path.exists(tmp_path / "out.safetensors")


def test_another_users_lock_file_still_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run folder shared by a group: the lock file belongs to whoever ran first, and the next user may not open it
    # for writing (these tests run as root, whom permissions do not stop, so the refusal is injected). flock needs
    # no write access: the lock must still be taken, not fail with a raw PermissionError.
    from tangtoc.train import folderlock

    (tmp_path / folderlock.LOCK_NAME).write_text("")
    real_open = os.open

    def other_users_file(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(folderlock.LOCK_NAME) and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(folderlock.os, "open", other_users_file)
    refused: list[Exception] = []
    with folderlock.FolderLock(tmp_path, "write checkpoints"):

        def second() -> None:
            try:
                folderlock.FolderLock(tmp_path, "write checkpoints").release()
            except FolderInUseError as e:
                refused.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert len(refused) == 1 and "cannot write checkpoints in" in str(refused[0])
