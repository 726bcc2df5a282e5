r"""The end of a plugin stage: every process group destroyed, and its threads joined, before the interpreter exits.

``torch.distributed.destroy_process_group()`` unregisters the groups but cannot free them: a group lives as long
as a reference to it does. DeepSpeed keeps its groups in module globals (``deepspeed.utils.groups``), ZeRO-3 in
every parameter (``ds_process_group``), and a ZeRO-3 engine with its model outlives the trainer (see
:func:`_destroy_deepspeed_engines` and :func:`_release_deepspeed_caches`). A Gloo group runs worker threads
(``pt_gloo_runloop``), which execute the collectives, run the completion callbacks of their futures and drop the
last reference to a finished collective's work object, with its tensors; each of these can take the GIL. A group
left to interpreter exit keeps them running while the interpreter finalises, and a thread that takes the GIL
then is ended on the spot (``pthread_exit``): inside a C++ destructor that is ``std::terminate``, and the rank
dies of SIGABRT after a successful run ("terminate called without an active exception"), so ``torchrun``
exits 1.

:func:`teardown_distributed` does all of it while the interpreter is alive: the stage's objects are freed by a
garbage collection, the ranks meet at a barrier, every group is destroyed, DeepSpeed's engines are destroyed and
the references DeepSpeed keeps are released, and a second collection frees the groups, whose destructors
(which release the GIL) wait for their worker threads. Nothing here touches the host.
"""

import gc
import sys
import weakref
from collections.abc import Callable

import torch.distributed as dist


# `deepspeed.utils.groups` globals that hold process groups (DeepSpeed 0.14 to 0.19.8), for the releases before
# 0.19.8, which have no `_release_process_group_references`.
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
    r"""Free the stage's objects, destroy every process group and wait for its threads; ``warn`` on a failure.

    Call it on every rank once the stage has returned. Without an initialised default group it only collects
    garbage. Each step that fails is reported through ``warn``, as the host reports a failed destruction, and
    the next steps run all the same. A group that something else still holds is reported too.
    """
    # The trainer and whatever it references sit in reference cycles. No group is freed here: torch.distributed
    # still holds every one, so a rank cannot close connections that another rank is still using.
    gc.collect()
    if not (dist.is_available() and dist.is_initialized()):
        return

    groups = _group_references()
    for step, action in (
        ("synchronise the ranks", dist.barrier),  # rank 0 may still be saving the model
        ("destroy the DeepSpeed engines", _destroy_deepspeed_engines),  # while deepspeed.comm still works
        ("destroy process group", dist.destroy_process_group),  # every group: shut down and unregistered
        ("release DeepSpeed's references to the process groups", _release_deepspeed_references),
    ):
        try:
            action()
        except Exception as e:
            warn(f"Failed to {step}: {e}.")

    gc.collect()  # the last references go: each group's destructor joins its worker threads
    alive = sum(ref() is not None for ref in groups)
    if alive:
        warn(
            f"{alive} of {len(groups)} process groups are still referenced after the teardown; their threads "
            "run until the interpreter exits."
        )


def _group_references() -> list[weakref.ref]:
    r"""Weak references to the process groups torch.distributed knows of: the default one and every ``new_group``."""
    world = getattr(sys.modules.get("torch.distributed.distributed_c10d"), "_world", None)
    references = []
    for group in list(getattr(world, "pg_map", None) or ()):
        try:
            references.append(weakref.ref(group))
        except TypeError:  # a group type without weak references: not counted
            continue
    return references


def _destroy_deepspeed_engines() -> None:
    r"""``destroy()`` on every live DeepSpeed engine, as accelerate's ``Accelerator.free_memory`` does.

    A ZeRO-3 optimizer's gradient hooks sit on autograd nodes, which hold the parameters and the hooks in C++:
    a cycle through the optimizer that the garbage collector cannot see, so the engine, its model and its
    groups outlive every collection. ``destroy()`` removes the hooks. Nothing global refers to an engine once
    the trainer is gone, so the engines are found among the objects the collector tracks.
    """
    engine_class = getattr(sys.modules.get("deepspeed.runtime.engine"), "DeepSpeedEngine", None)
    if not isinstance(engine_class, type):
        return

    for engine in [obj for obj in gc.get_objects() if issubclass(type(obj), engine_class)]:
        destroy = getattr(engine, "destroy", None)
        if callable(destroy):
            destroy()


def _release_deepspeed_references() -> None:
    _release_deepspeed_groups()
    _release_deepspeed_caches()


def _release_deepspeed_groups() -> None:
    r"""Drop the process groups DeepSpeed keeps in the globals of ``deepspeed.utils.groups``."""
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
    r"""Empty DeepSpeed's process-wide caches that keep every ZeRO-3 model, and so its groups, alive.

    ``FWD_MODULE_STACK`` gets each ZeRO-3 model as its bottom entry, never removed, and the coordinator's
    ``__params_to_release`` is an unbounded ``functools.lru_cache`` keyed by the modules. Both serve a forward
    pass in progress, and there is none.
    """
    stack = getattr(sys.modules.get("deepspeed.runtime.zero.parameter_offload"), "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack.clear()

    module = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    coordinator = getattr(module, "PartitionedParameterCoordinator", None)
    cache = _lru_cache(getattr(coordinator, "_PartitionedParameterCoordinator__params_to_release", None))
    if cache is not None:
        cache.cache_clear()


def _lru_cache(function: object, depth: int = 3) -> object | None:
    r"""The ``functools.lru_cache`` wrapper in ``function`` or under its decorators (``__wrapped__`` or closure)."""
    for _ in range(depth + 1):
        if function is None or callable(getattr(function, "cache_clear", None)):
            return function

        inner = getattr(function, "__wrapped__", None)
        for cell in getattr(function, "__closure__", None) or ():
            if inner is not None:
                break
            try:
                inner = cell.cell_contents if callable(cell.cell_contents) else None
            except ValueError:  # an empty cell
                continue
        function = inner

    return None
