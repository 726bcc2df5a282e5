"""Hub look-ups that the offline mode (or a missing network) stopped, as one line naming what and how to fix it.

Shared by the ``llamafactory-wspo`` commands (:func:`llamafactory_wspo.cli.args.run_command`) and the training
stages' data loading (:func:`offline_data_sets`), where the host's ``get_dataset`` would end in ``datasets``' long
traceback.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from .hparams import PluginInputError


@contextmanager
def offline_data_sets() -> Iterator[None]:
    r"""Around LLaMA-Factory's ``get_dataset``: a hub data set that cannot be had offline becomes one
    :class:`~llamafactory_wspo.hparams.PluginInputError` naming it (``llamafactory-cli train`` prints it as one line)."""
    try:
        yield
    except PluginInputError:
        raise
    except Exception as err:
        message = offline_message(err)
        if message is None:
            raise
        raise PluginInputError(f"`dataset` {message}.") from err


def offline_message(err: BaseException) -> str | None:
    r"""One line naming the model or data set and ``HF_HUB_OFFLINE`` where ``err`` comes from a hub look-up that the
    offline mode (or a missing network) stopped: ``huggingface_hub``'s ``LocalEntryNotFoundError`` or
    ``OfflineModeIsEnabled`` in its chain, or named by ``datasets``' "Couldn't reach 'NAME' on the Hub (...)";
    ``None`` otherwise."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    chain, todo = [], [err]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in chain):
            continue
        chain.append(current)
        todo += [current.__cause__, current.__context__]
    offline = re.compile(r"Couldn't reach '([^']+)' on the Hub \((?:OfflineModeIsEnabled|LocalEntryNotFoundError)\)")
    named = [match.group(1) for item in chain for match in [offline.search(str(item))] if match]
    if not named and not any(isinstance(item, LocalEntryNotFoundError | OfflineModeIsEnabled) for item in chain):
        return None

    name = named[0] if named else _hub_name(chain)
    what = f"{name}: " if name else ""
    download = f"`huggingface-cli download {name}`" if name else "`huggingface-cli download NAME`"
    if os.getenv("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return (
            f"{what}not in the local hub cache, and HF_HUB_OFFLINE=1 stops its download: download it once online "
            f"({download}, add `--repo-type dataset` for a data set), give a local path, or unset HF_HUB_OFFLINE"
        )
    return f"{what}the hub cannot be reached and it is not in the local hub cache: connect, or give a local path"


def _hub_name(chain: list[BaseException]) -> str | None:
    r"""The repository that the failed look-up asked for: the ``repo_id`` of the deepest hub call in a traceback."""
    import traceback

    for item in chain:
        found = None
        for frame, _ in traceback.walk_tb(item.__traceback__):
            for key in ("repo_id", "path_or_repo_id", "pretrained_model_name_or_path"):
                value = frame.f_locals.get(key)
                if isinstance(value, str) and value:
                    found = value
                    break
        if found:
            return found
    return None
