from .workflow import run_grpo


__all__ = ["run_grpo"]
