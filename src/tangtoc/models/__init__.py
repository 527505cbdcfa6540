"""Models written for tangtoc, each knowing its training FLOPs (per token or per sample) for MFU.

* :class:`GPT` with :func:`gpt_config` (``"gpt2"`` = GPT-2 small, 124M, down to ``"mini"`` and ``"tiny"``).
* :class:`MLP` with :func:`mlp_config` (``"small"``, ``"mini"``, ``"tiny"``).
"""

from tangtoc.models.gpt import GPT, GPT_SIZES, GPTConfig, gpt_config
from tangtoc.models.mlp import MLP, MLP_SIZES, MLPConfig, mlp_config

__all__ = ["GPT", "GPT_SIZES", "MLP", "MLP_SIZES", "GPTConfig", "MLPConfig", "gpt_config", "mlp_config"]
