"""The precomputed log-probs of the frozen models: their store on disk (:mod:`.store`, :mod:`.files`), what keys it
(:mod:`.fingerprint`), the pass that fills it (:mod:`.precompute`, :mod:`.sharding`) and the weak shift's statistics
(:mod:`.shift_stats`)."""
