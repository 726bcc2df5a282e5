from .workflow import run_wpo


__all__ = ["run_wpo"]
