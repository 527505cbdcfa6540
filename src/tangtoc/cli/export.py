"""``tangtoc export CKPT --safetensors OUT``: a checkpoint's model weights as a safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from tangtoc.cli.args import UsageError, check_writable
from tangtoc.cli.render import console, fmt_bytes
from tangtoc.export import export_safetensors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's model weights as safetensors, loadable without tangtoc",
        description="Write the model weights of a tangtoc checkpoint (a step-NNNNNNNN.pt file, or a run's folder: "
        "its newest) as a safetensors file, with the step and the model's config in its metadata. Load it with "
        "model.load_state_dict(safetensors.torch.load_file(OUT)).",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="a checkpoint file, or a run's checkpoint folder")
    p.add_argument("--safetensors", type=Path, metavar="OUT", required=True, help="the file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        check_writable(args.safetensors, "--safetensors")
    except UsageError as e:
        console(stderr=True).print(f"tangtoc export: error: {e}", markup=False)
        return 2
    path = export_safetensors(args.checkpoint, args.safetensors)  # CheckpointError/OutputError: exit 1, one line
    console().print(f"wrote {path} ({fmt_bytes(path.stat().st_size)})", markup=False)
    return 0
