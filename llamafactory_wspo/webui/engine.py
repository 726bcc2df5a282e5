"""``llamafactory.webui.engine``: checked only; the Train tab wraps the engine's language switch when it is built."""

from ..host.checks import host_attr, host_module


def check(engine) -> None:
    r"""The language switch that the Train tab wraps, and the manager calls that it makes."""
    host_attr(engine, "Engine.change_lang", ("self", "lang"))
    manager = host_module("llamafactory.webui.manager")
    host_attr(manager, "Manager.get_base_elems", ("self",))
    host_attr(manager, "Manager.get_elem_by_id", ("self", "elem_id"))


def patch(engine) -> None:
    return None
