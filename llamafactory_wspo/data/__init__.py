from .collator import KTODataCollatorWithLogps, PairwiseDataCollatorWithLogps, SFTDataCollatorWithLogps
from .loader import (
    check_wspo_data,
    dataset_splits,
    drop_unscored,
    get_wspo_dataset,
    kto_rows,
    map_splits,
    max_token_id,
    select_responses,
)


__all__ = [
    "KTODataCollatorWithLogps",
    "PairwiseDataCollatorWithLogps",
    "SFTDataCollatorWithLogps",
    "check_wspo_data",
    "dataset_splits",
    "drop_unscored",
    "get_wspo_dataset",
    "kto_rows",
    "map_splits",
    "max_token_id",
    "select_responses",
]
