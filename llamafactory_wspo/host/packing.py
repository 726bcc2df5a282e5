"""``neat_packing`` for the plugin stages that pack (``wspo``, ``wpo``), past the host's refusal.

LLaMA-Factory's ``get_train_args`` refuses ``neat_packing`` for every stage but SFT ("`neat_packing` cannot be set as
True except SFT."), then derives ``model_args.block_diag_attn`` from it. The parser guard (:mod:`.patches`) hides the
flag from that check for a packing plugin stage (:func:`hide_neat_packing`, right after the host has parsed the
arguments) and the stage's workflow puts it back before anything reads it (:func:`restore_neat_packing`). Every
other stage keeps the host's refusal.
"""

from typing import Any


PACKING_STAGES = ("wspo", "wpo")
_HIDDEN = "_llamafactory_wspo_neat_packing"


def hide_neat_packing(stage: Any, parsed: tuple) -> tuple:
    r"""The host parser's result, with ``neat_packing`` set aside for a packing plugin stage (``packing`` stays on)."""
    if stage not in PACKING_STAGES or len(parsed) < 2:
        return parsed

    data_args = parsed[1]
    if getattr(data_args, "neat_packing", False):
        data_args.neat_packing = False
        setattr(data_args, _HIDDEN, True)

    return parsed


def restore_neat_packing(model_args: Any, data_args: Any) -> None:
    r"""Put back what :func:`hide_neat_packing` set aside, with the host's derived ``block_diag_attn``."""
    if getattr(data_args, _HIDDEN, False):
        delattr(data_args, _HIDDEN)
        data_args.neat_packing = True
        data_args.packing = True
        model_args.block_diag_attn = True
