r"""The end of a plugin stage: every process group destroyed, and its threads joined, before the interpreter exits.

``torch.distributed.destroy_process_group()`` forgets the groups but cannot destroy them: a group lives as long
as a reference to it does, and DeepSpeed keeps its groups in module globals (``deepspeed.utils.groups``), ZeRO-3
in every parameter (``ds_process_group``), and the trainer and engine, which hold those, sit in reference
cycles that only the garbage collector frees. Each Gloo group runs worker threads, which execute the collectives
and drop the last reference to a finished collective's work object, with its tensors and future; that can need
the GIL. A group left to interpreter exit is destroyed during finalisation, when a thread that takes the GIL is
ended on the spot (``pthread_exit``): inside a C++ destructor that is ``std::terminate``, and the rank dies of
SIGABRT after a successful run ("terminate called without an active exception"), so ``torchrun`` exits 1.

:func:`teardown_distributed` does it while the interpreter is alive: the stage's objects are freed by a
garbage collection, the ranks meet at a barrier, every group is destroyed, the references DeepSpeed keeps to
them are released, and a second collection frees the groups, whose destructors (which release the GIL) wait for
their worker threads. Nothing here touches the host.
"""

import gc
import sys
import weakref
from collections.abc import Callable

import torch.distributed as dist


# `deepspeed.utils.groups` globals that hold process groups (DeepSpeed 0.14 to 0.19.8), for the releases before
# 0.19.8, whose `deepspeed.comm.destroy_process_group` does not release them itself.
_DEEPSPEED_GROUP_GLOBALS = (
    "_WORLD_GROUP",
    "_ZERO_PARAM_INTRA_PARALLEL_GROUP",
    "_TENSOR_MODEL_PARALLEL_GROUP",
    "_MODEL_PARALLEL_GROUP",
    "_DATA_PARALLEL_GROUP",
    "mpu",
    "mesh_device",
)
_DEEPSPEED_GROUP_MAPS = ("_EXPERT_PARALLEL_GROUP", "_EXPERT_DATA_PARALLEL_GROUP", "_ALL_TO_ALL_GROUP")


def teardown_distributed(warn: Callable[[str], None]) -> None:
    r"""Free the stage's objects, then destroy every process group and wait for their threads; ``warn`` on failure.

    Call it on every rank after the stage returns. Without an initialised default group it only collects
    garbage. A failure of the barrier or of the destruction is reported through ``warn``, as the host does, and
    the references are released all the same.
    """
    gc.collect()  # the trainer, the engine and the model: their collectives' work objects go with them
    if not (dist.is_available() and dist.is_initialized()):
        return

    groups = [weakref.ref(group) for group in _registered_groups()]
    try:
        dist.barrier()  # rank 0 may still be saving the model
        dist.destroy_process_group()  # every group: shut down and unregistered
    except Exception as e:
        warn(f"Failed to destroy process group: {e}.")
    finally:
        _release_deepspeed_groups()
        _release_deepspeed_caches()
        gc.collect()  # the last references go; each group's destructor joins its worker threads

    alive = sum(ref() is not None for ref in groups)
    if alive:
        warn(
            f"{alive} of {len(groups)} process groups are still referenced after the teardown; their threads "
            "run until the interpreter exits."
        )


def _registered_groups() -> list:
    r"""The process groups torch.distributed knows of (the default one and every ``new_group``)."""
    world = getattr(sys.modules.get("torch.distributed.distributed_c10d"), "_world", None)
    return list(getattr(world, "pg_map", {}))


def _release_deepspeed_groups() -> None:
    r"""Drop the process groups DeepSpeed keeps in module globals, where DeepSpeed is loaded."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return

    release = getattr(groups, "_release_process_group_references", None)  # DeepSpeed 0.19.8
    if callable(release):
        release(group=None)
        return

    for name in _DEEPSPEED_GROUP_GLOBALS:
        if getattr(groups, name, None) is not None:
            setattr(groups, name, None)
    for name in _DEEPSPEED_GROUP_MAPS:
        mapping = getattr(groups, name, None)
        if isinstance(mapping, dict):
            mapping.clear()


def _release_deepspeed_caches() -> None:
    r"""Empty DeepSpeed's process-wide caches that keep every ZeRO-3 model, with its engine and groups, alive.

    ``FWD_MODULE_STACK`` gets each ZeRO-3 model as its bottom entry, never removed, and the coordinator's
    ``__params_to_release`` is an unbounded ``functools.lru_cache`` keyed by the modules. Both only matter while
    a forward pass runs, and the groups the models hold are destroyed by now.
    """
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    stack = getattr(offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack.clear()

    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    cls = getattr(coordinator, "PartitionedParameterCoordinator", None)
    cached = _lru_cache(getattr(cls, "_PartitionedParameterCoordinator__params_to_release", None))
    if cached is not None:
        cached.cache_clear()


def _lru_cache(function: object, depth: int = 3) -> object | None:
    r"""The ``functools.lru_cache`` wrapper inside ``function``, through decorators (``__wrapped__`` or closure)."""
    for _ in range(depth):
        if function is None or callable(getattr(function, "cache_clear", None)):
            return function
        inner = getattr(function, "__wrapped__", None)
        if inner is None:
            cells = getattr(function, "__closure__", None) or ()
            inner = next((cell.cell_contents for cell in cells if callable(cell.cell_contents)), None)
        function = inner
    return function if callable(getattr(function, "cache_clear", None)) else None
