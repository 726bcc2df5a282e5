from .collator import WSPODataCollator
from .loader import check_wspo_data, get_wspo_dataset


__all__ = ["WSPODataCollator", "check_wspo_data", "get_wspo_dataset"]
