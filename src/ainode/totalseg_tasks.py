"""TotalSegmentator's tasks, their weight folders and label names, from TotalSegmentator itself.

The tables come from the ``TotalSegmentator`` package (``map_tasks_config``: task -> nnU-Net
dataset ids -> weight folder names; ``map_to_binary``: label names of a task and of each part of
a multi-part task), so a new TotalSegmentator release brings its tasks with it. Those two modules
import nothing; the package is installed without its dependencies (see pyproject.toml).

Task names are TotalSegmentator's; a task's sub-modes are ``<task>_fast`` and
``<task>_fastest`` (``total_fast`` is the single 3 mm model ``Dataset297_...``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_MISSING = (
    "TotalSegmentator's task tables are not installed: "
    "pip install --no-deps TotalSegmentator==2.18.0"
)


class TotalSegmentatorTablesMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(_MISSING)


def _config() -> tuple[dict[str, Any], dict[int, Any]]:
    try:
        from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    except ImportError as error:
        raise TotalSegmentatorTablesMissing() from error
    return TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS


def _maps() -> Any:
    try:
        from totalsegmentator import map_to_binary
    except ImportError as error:
        raise TotalSegmentatorTablesMissing() from error
    return map_to_binary


@lru_cache(maxsize=1)
def totalsegmentator_tasks() -> dict[str, tuple[str, ...]]:
    """Task name -> the nnU-Net dataset folders of its model(s), in the order they are merged."""
    configs, weights = _config()
    tasks: dict[str, tuple[str, ...]] = {}
    for name, config in configs.items():
        modes = config.get("sub_modes") or {"default": config}
        for mode, mode_config in modes.items():
            ids = mode_config.get("task_id")
            id_list = ids if isinstance(ids, list) else [ids]
            known = [i for i in id_list if isinstance(i, int) and i in weights]
            folders = tuple(str(weights[i]["foldername"]) for i in known)
            if folders and len(folders) == len(id_list):
                tasks[name if mode == "default" else f"{name}_{mode}"] = folders
    return tasks


def base_task(task: str) -> str:
    """``total`` for ``total_fast``/``total_fastest``: the task whose labels a sub-mode has."""
    for suffix in ("_fastest", "_fast"):
        if task.endswith(suffix) and task.removesuffix(suffix) in _config()[0]:
            return task.removesuffix(suffix)
    return task


def task_label_names(task: str) -> dict[int, str]:
    """The label values and names TotalSegmentator gives a task's (merged) output."""
    names = _maps().class_map.get(base_task(task), {})
    return {int(value): str(name) for value, name in names.items()}


def part_label_names(dataset_folder: str) -> dict[int, str] | None:
    """A part of a multi-part task: its own label values -> names (how TotalSegmentator merges
    the parts); None for a dataset that is not such a part."""
    maps = _maps()
    try:
        dataset_id = int(dataset_folder.removeprefix("Dataset").split("_", 1)[0])
    except ValueError:
        return None
    for table_name, parts_name in (
        ("map_taskid_to_partname_ct", "class_map_5_parts"),
        ("map_taskid_to_partname_ct_v3", "class_map_5_parts_total_v3"),
        ("map_taskid_to_partname_mr", "class_map_parts_mr"),
        ("map_taskid_to_partname_headneck_muscles", "class_map_parts_headneck_muscles"),
    ):
        part = getattr(maps, table_name, {}).get(dataset_id)
        parts = getattr(maps, parts_name, {})
        if part is not None and part in parts:
            return {int(value): str(name) for value, name in parts[part].items()}
    return None


def task_for_datasets(datasets: set[str]) -> list[str]:
    """The tasks whose weight folders are all among ``datasets``, largest first (so the five
    parts of ``total`` are one task, not five)."""
    found = [task for task, folders in totalsegmentator_tasks().items() if set(folders) <= datasets]
    return sorted(found, key=lambda task: -len(totalsegmentator_tasks()[task]))
