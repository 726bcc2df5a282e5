"""The stages' data: LLaMA-Factory's loading with the plugin's checks and row selections, the collators that attach the
stored log-probs, and the weak side of cross-tokenizer WSPO rows (:mod:`.weak_side`)."""

from .checks import check_grpo_data, check_wpo_data, check_wspo_data
from .collator import KTODataCollatorWithLogps, PairwiseDataCollatorWithLogps, SFTDataCollatorWithLogps
from .loader import drop_unscored, get_wspo_dataset, kto_rows, max_token_id, select_responses
from .packed_pairs import PackedPairsCollatorWithLogps, pack_pairs
from .splits import dataset_splits, map_splits


__all__ = [
    "KTODataCollatorWithLogps",
    "PackedPairsCollatorWithLogps",
    "PairwiseDataCollatorWithLogps",
    "SFTDataCollatorWithLogps",
    "check_grpo_data",
    "check_wpo_data",
    "check_wspo_data",
    "dataset_splits",
    "drop_unscored",
    "get_wspo_dataset",
    "kto_rows",
    "map_splits",
    "max_token_id",
    "pack_pairs",
    "select_responses",
]
