"""Where the plugin meets LLaMA-Factory's tuner: stock stages untouched, the copied callback set-up pinned to the host."""

import ast
import inspect

import pytest
import torch


pytestmark = pytest.mark.host_compat  # pins the copied callback block to each tested host


def _statements(function: ast.FunctionDef) -> list[str]:
    r"""The callback set-up of a training function: from the ``LogCallback`` to the ``ReporterCallback`` line."""
    block, started = [], False
    for stmt in function.body:
        text = ast.unparse(stmt).replace("tuner.", "")  # the plugin reaches the host's names through the module
        started = started or "callbacks.append(LogCallback())" in text
        if started:
            block.append(text)
            if "ReporterCallback" in text:
                break

    return block


def _function(source: str, name: str) -> ast.FunctionDef:
    return next(
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == name
    )


def test_callback_setup_is_the_hosts():
    r"""``_plugin_training_function`` copies the host's callback block; this fails as soon as the host's block changes."""
    import llamafactory.train.tuner as tuner

    from llamafactory_wspo.host import patches

    host = _statements(_function(inspect.getsource(tuner), "_training_function"))
    ours = _statements(_function(inspect.getsource(patches), "_plugin_training_function"))
    assert len(host) >= 6 and host[-1].startswith("callbacks.append(ReporterCallback(")
    assert ours == host


def test_stock_stages_keep_the_hosts_distributed_calls():
    r"""The tuner's ``dist`` is ``torch.distributed`` itself, and a stock stage runs the host's own function."""
    import llamafactory.train.tuner as tuner

    assert tuner.dist is torch.distributed
    assert tuner._training_function.__module__ == "llamafactory_wspo.host.patches"  # the plugin's router ...
    (original,) = [cell.cell_contents for cell in tuner._training_function.__closure__ if callable(cell.cell_contents)]
    assert original.__module__ == "llamafactory.train.tuner"  # ... hands every stock stage to the host's function
    source = inspect.getsource(original)
    assert "dist.destroy_process_group()" in source and "barrier" not in source
