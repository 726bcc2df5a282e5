"""Loggers that live under LLaMA-Factory's ``llamafactory`` logger, so that its handlers (console
format, ``*_rank0`` helpers, LLaMA-Board's log view) show the plugin's messages too."""

from llamafactory.extras import logging


def get_logger(module_name: str) -> "logging._Logger":
    return logging.get_logger("llamafactory.wspo." + module_name.removeprefix("llamafactory_wspo."))
