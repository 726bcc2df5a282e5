from .collator import PairwiseDataCollatorWithLogps, SFTDataCollatorWithLogps
from .loader import check_wspo_data, get_wspo_dataset, select_responses


__all__ = [
    "PairwiseDataCollatorWithLogps",
    "SFTDataCollatorWithLogps",
    "check_wspo_data",
    "get_wspo_dataset",
    "select_responses",
]
