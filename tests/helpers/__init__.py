"""Helpers shared by the test modules: run a training (``llamafactory-cli`` or in-process), configs, scripts."""
