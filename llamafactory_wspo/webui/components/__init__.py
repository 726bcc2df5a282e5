"""Counterparts of LLaMA-Board's ``llamafactory.webui.components``: the Train tab (:mod:`.train`)."""
