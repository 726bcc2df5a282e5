"""What the LLaMA-Board patches share: the plugin stages, their fields, and the elements' HTML ids."""

from typing import Any


# Stage labels of the "Stage" drop-down (like LLaMA-Board's own "DPO", "KTO") -> stage.
UI_STAGES = {"WSPO": "wspo", "WPO": "wpo", "GRPO": "grpo"}
# The plugin's elements in the Train tab, per stage; each is registered as `train.<name>` and named like its argument.
STAGE_FIELDS = {
    "wspo": (
        "weak_base_model",
        "weak_aligned_model",
        "weak_template",
        "wspo_response",
        "wspo_shift_warning",
        "precompute_logps",
    ),
    "wpo": ("wpo_alignment", "wpo_weighting", "precompute_logps"),
    "grpo": (
        "grpo_reward_funcs",
        "length_reward_min",
        "length_reward_max",
        "grpo_num_generations",
        "grpo_max_completion_length",
        "grpo_temperature",
        "grpo_top_p",
        "grpo_beta",
    ),
}
# The stock Train tab's fields that each plugin stage passes on too ("RLHF configurations"); GRPO has its own β.
STAGE_HOST_KEYS = {"wspo": ("pref_beta", "pref_ftx"), "wpo": ("pref_beta", "pref_ftx", "pref_loss"), "grpo": ()}
FIELDS = tuple(dict.fromkeys(name for names in STAGE_FIELDS.values() for name in names))
TAB = "wspo_tab"  # the accordion holding them
ELEM_ID_PREFIX = "llamafactory_wspo_"  # HTML ids of the plugin's elements


def get_stage(training_stage: str | None) -> str | None:
    r"""The stage (``wspo``, ``dpo``, ...) of a label of the "Stage" drop-down."""
    from llamafactory.extras.constants import TRAINING_STAGES

    return TRAINING_STAGES.get(training_stage)


def localize(table: dict[str, Any], lang: str | None) -> Any:
    r"""The entry of ``table`` for ``lang``, or the English one."""
    return table.get(lang) or table["en"]
