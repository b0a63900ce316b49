"""YAML loading for config files that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so ``deploy.env`` naming STORAGE_URI twice (or two
``lr:`` lines under ``train``) would silently lose one; the error names the YAML path and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    pass


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode, path: tuple = ()) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            where = ".".join(str(p) for p in (*_path_of(loader, node), key))
            raise DuplicateKeyError(f"{where}: key given twice (lines {seen[key]} and {line})")
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


def _path_of(loader: _Loader, node: yaml.Node) -> tuple:
    return loader._paths.get(id(node), ())  # type: ignore[attr-defined]


def _compose_paths(loader: _Loader, node: yaml.Node, path: tuple = ()) -> None:
    """Record each mapping's YAML path (``deploy.env``) so that the error can name it."""
    if isinstance(node, yaml.MappingNode):
        loader._paths[id(node)] = path  # type: ignore[attr-defined]
        for key_node, value_node in node.value:
            _compose_paths(loader, value_node, (*path, key_node.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_paths(loader, item, (*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a mapping with a repeated key is a DuplicateKeyError naming its path."""
    loader = _Loader(text)
    try:
        loader._paths = {}  # type: ignore[attr-defined]
        node = loader.get_single_node()
        if node is None:
            return None
        _compose_paths(loader, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
