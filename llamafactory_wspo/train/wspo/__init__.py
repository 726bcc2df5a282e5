from .workflow import run_wspo


__all__ = ["run_wspo"]
