"""What tangtoc tells the user for the device-error wordings whose message alone fixes the cause.

Most wordings name an argument and two devices, and the cause follows from the argument's role
(:func:`tangtoc.diagnose.roles.likely_cause`). Some name a situation instead: ``.numpy()`` on a CUDA tensor, a CPU
``torch.Generator`` under a CUDA default device, a copy out of ``meta``. For those the wording is the diagnosis,
and this module holds the cause and the fix to give, keyed by the wording's name in
:data:`tangtoc.diagnose.wordings.PATTERNS`; it also holds the notes a wording needs about itself (that it does not
say which side is odd, that it is only the start of the message). :mod:`tangtoc.diagnose.wordings` reads the
messages; nothing here matches text.
"""

from __future__ import annotations

from tangtoc.diagnose.roles import is_host

# wording -> (cause, fix), for wordings whose cause does not depend on anything the message names.
FIXED: dict[str, tuple[str, str]] = {
    "mps-placeholder": (
        "the operation runs on MPS but one of its tensors is on the CPU (this is MPS's wording for a device "
        "mismatch before PyTorch 2.4): the batch or the model was not moved, or a tensor was created "
        "without `device=`",
        "move the model and every batch: `model.to('mps')`, `batch = tt.to_device(batch, 'mps')`, and create "
        "new tensors with `device=x.device`. `with tt.device_guard(model): model(batch)` names the tensor.",
    ),
    "meta-copy": (
        "the model was built on the `meta` device (`torch.device('meta')`, accelerate's `init_empty_weights`, "
        "or a transformers model loaded with `device_map`/`low_cpu_mem_usage`), which records shapes but holds "
        "no values, and then `.to()` was asked to copy those values",
        "allocate instead of copying, then fill the weights: `model.to_empty(device=device)` followed by "
        "`model.load_state_dict(state_dict)` (or each module's `reset_parameters()`); with transformers, "
        "load onto the device directly (`from_pretrained(..., device_map=device)`) and do not call `.to()` "
        "afterwards.",
    ),
    "embedding-current-device": (
        "an Embedding's table and its token ids are on different devices (the wording of PyTorch <= 1.7's "
        "CUDA embedding): the model was not moved while the ids were, or the other way round",
        "move both, once: `model.to(device)` after building it, and the ids with the batch "
        "(`batch = tt.to_device(batch, device)`).",
    ),
    "optimizer-foreach": (
        "the optimizer's state lives on another device than its parameters: it was created or loaded before "
        "`model.to(device)` (the state stayed where it was)",
        "move the model first, then create the optimizer and call `optimizer.load_state_dict(...)`; it moves the "
        "state to each parameter's device. tt.check_devices(model, optimizer=opt) names each stray tensor.",
    ),
    "numpy": (
        "NumPy only reads host memory; the tensor is on the accelerator",
        "bring it back first, detached: `tt.to_numpy(t)` (or `t.detach().cpu().numpy()`). It waits for the "
        "device, so do it at log intervals, not every step.",
    ),
    "pack-lengths": (
        "pack_padded_sequence is the exception to 'everything on the device': it wants its lengths on the CPU",
        "pass `lengths.cpu()` (or keep the lengths as a CPU tensor or a list when moving the batch: "
        "`tt.to_device(batch, device, skip_keys=('lengths',))`).",
    ),
    "load-map-location": (
        "the checkpoint holds tensors saved on an accelerator that this machine does not have (no CUDA here, or "
        "fewer GPUs than the index it was saved from)",
        "load it onto the CPU, `torch.load(path, map_location='cpu')`, or onto a device that exists "
        "(`map_location=device`), then move it with `tt.to_device`. `tangtoc doctor` says why CUDA is missing.",
    ),
    "no-cuda": (
        "this PyTorch build is CPU-only, so every '.cuda()' or device='cuda' fails",
        "pick the device instead of hard-coding it (`device = tt.pick_device()`), or install a CUDA build; "
        "`tangtoc doctor` says which.",
    ),
    "stem": (
        "two tensors of one operation live on different devices: most often the batch was not moved to the "
        "model's device, the model was moved after the optimizer was created, or a tensor was created inside "
        "`forward` without `device=`",
        "move the model once (`model.to(device)`, before creating the optimizer), move every batch "
        "(`batch = tt.to_device(batch, device)`), and create new tensors with `device=x.device`. To have the "
        "module and tensor named, run the step under `with tt.device_guard(model):`.",
    ),
}

# Indexing with accelerator indices into a CPU tensor: the indexed tensor is the one left behind.
LOOKUP_TABLE_ON_CPU = (
    "a lookup table (e.g. a noise schedule, a position table) stayed on the CPU, stored as a plain "
    "tensor attribute that `.to()` does not move, while the indices are on the accelerator",
    "register it as a buffer (`self.register_buffer('table', table, persistent=False)`) so `model.to()` "
    "moves it, or index with `table.to(idx.device)[idx]`.",
)

STEM_NOTE = (
    "this is only the start of PyTorch's message: the full one names the two devices and often the argument and "
    "operation. Pass the whole exception (`tt.explain(e)` in the `except` block) for a precise answer."
)


def generator_cause(op_device: str, generator_device: str) -> tuple[str, str]:
    """Cause and fix when a random operation on ``op_device`` was given a generator on ``generator_device``."""
    if is_host(generator_device):
        return (
            f"a random operation ran on {op_device} with a CPU `torch.Generator`. The usual path: the default "
            f"device or tensor type was set to {op_device} (`torch.set_default_device`, "
            "`torch.set_default_tensor_type('torch.cuda.FloatTensor')`), so the DataLoader's shuffling "
            f"(`torch.randperm(n, generator=...)`) runs on {op_device} while its generator is a CPU one",
            "keep the default device on the CPU and move tensors explicitly (`model.to(device)`, "
            "`batch = tt.to_device(batch, device)`); if you do need the random op on "
            f"{op_device}, give it a generator there: `torch.Generator(device='{op_device}')`.",
        )
    return (
        f"a `torch.Generator` created on {generator_device} was given to a random operation that runs on the CPU, "
        "most often the DataLoader's shuffling (`DataLoader(..., generator=g)` samples indices on the CPU)",
        "give CPU work a CPU generator: `torch.Generator()` (seeded with `.manual_seed(...)`).",
    )


def cpu_only_kernel_note(op: str, device: str) -> str:
    """The note for "no ``slow_conv`` kernel for ``device``": a placement error that reads as a missing kernel."""
    return (
        f"PyTorch reports a missing {op} kernel for {device}, but the kernel is CPU-only by design: it was "
        f"chosen because the convolution's input is on the CPU while its weight is on {device}. It is a placement "
        "error in disguise."
    )


def unsided_note(culprit: str, expected: str) -> str:
    """The note for a wording that names two devices but not which tensor is on which."""
    return (
        f"this wording names two devices but not which tensor is on which; tangtoc takes the {culprit} one as "
        f"the one left behind. If you meant to run on {culprit}, it is the other way round: the tensor on "
        f"{expected} is the stray one, and `.to('{culprit}')` on it (or not moving it) is the fix."
    )
