"""Models written for tangtoc, each knowing its training FLOPs (per token or per sample) for MFU.

* :class:`GPT` with :func:`gpt_config` (``"gpt2"`` = GPT-2 small, 124M, down to ``"mini"`` and ``"tiny"``).
* :class:`MLP` with :class:`MLPConfig`.
"""

from tangtoc.models.gpt import GPT, GPT_SIZES, GPTConfig, gpt_config
from tangtoc.models.mlp import MLP, MLPConfig

__all__ = ["GPT", "GPT_SIZES", "MLP", "GPTConfig", "MLPConfig", "gpt_config"]
