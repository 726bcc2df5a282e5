from .collator import KTODataCollatorWithLogps, PairwiseDataCollatorWithLogps, SFTDataCollatorWithLogps
from .loader import check_wspo_data, get_wspo_dataset, kto_rows, select_responses


__all__ = [
    "KTODataCollatorWithLogps",
    "PairwiseDataCollatorWithLogps",
    "SFTDataCollatorWithLogps",
    "check_wspo_data",
    "get_wspo_dataset",
    "kto_rows",
    "select_responses",
]
