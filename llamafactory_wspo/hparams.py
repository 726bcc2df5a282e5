"""Arguments of the plugin stages, parsed by LLaMA-Factory's own ``HfArgumentParser``.

:class:`WSPOArguments` is a mixin: :mod:`llamafactory_wspo.integration` combines it with
LLaMA-Factory's ``FinetuningArguments`` so that YAML keys and ``--key value`` flags both work.
The WSPO hyper-parameter γ is LLaMA-Factory's ``pref_beta`` and the optional SFT term is
``pref_ftx``, so the authors' recipes run unchanged.
"""

import os
from dataclasses import dataclass, field
from typing import Literal


PLUGIN_STAGES = ("wspo",)
WSPO_RESPONSES = ("chosen", "rejected", "both")


@dataclass
class WSPOArguments:
    r"""Arguments of the ``wspo`` stage (Weak-to-Strong Preference Optimization)."""

    weak_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model before its alignment (pi_w^0). Required for `stage: wspo`."
        },
    )
    weak_aligned_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of the weak model after its alignment, e.g. by DPO or PPO (pi_w*). "
            "Required for `stage: wspo`."
        },
    )
    wspo_response: Literal["chosen", "rejected", "both"] = field(
        default="chosen",
        metadata={
            "help": "Which responses of a pairwise (ranking) data set WSPO trains on: `chosen`, `rejected` or `both`. "
            "SFT-format data sets always use their single response."
        },
    )
    precompute_logps: bool = field(
        default=True,
        metadata={
            "help": "Compute the weak models' per-token shift and the reference log-probs once before training and "
            "cache them on disk, so that training holds only the policy. `false` keeps all models in memory and "
            "computes the same values at every step."
        },
    )
    logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the precomputed log-prob cache (a shared file system for multi-node runs). "
            "Defaults to $LLAMAFACTORY_WSPO_CACHE or ~/.cache/llamafactory_wspo."
        },
    )
    precompute_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size of the precompute pass. Defaults to `per_device_eval_batch_size`."},
    )

    def check_plugin_args(self) -> None:
        r"""Structural checks that need no file system access; called from ``__post_init__``."""
        if self.stage != "wspo":
            return

        if self.wspo_response not in WSPO_RESPONSES:
            raise ValueError(
                f"`wspo_response` must be one of {', '.join(WSPO_RESPONSES)}, got {self.wspo_response!r}."
            )

        for key in ("weak_base_model", "weak_aligned_model"):
            if not getattr(self, key):
                raise ValueError(
                    f"`{key}` is required for `stage: wspo`: set it to the path or hub id of the weak model "
                    f"{'before' if key == 'weak_base_model' else 'after'} its alignment."
                )

        if self.precompute_batch_size is not None and self.precompute_batch_size < 1:
            raise ValueError("`precompute_batch_size` must be a positive integer.")

    def get_logps_cache_dir(self) -> str:
        if self.logps_cache_dir:
            return os.path.abspath(os.path.expanduser(self.logps_cache_dir))

        default = os.getenv("LLAMAFACTORY_WSPO_CACHE") or os.path.join("~", ".cache", "llamafactory_wspo")
        return os.path.abspath(os.path.expanduser(default))
