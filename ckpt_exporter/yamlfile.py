"""Reading a YAML file the user wrote (the settings file, the web config), with one-line errors.

Both files are read the same way: bytes, UTF-8, yaml.safe_load, and a bound on nesting (deeper than
any real file; a deeper one is a mistake, or an attack on the parser, whose recursion would end in
a traceback). The caller says which file it is: YamlFileError's message does not name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_NESTING = 32


class YamlFileError(ValueError):
    """What is wrong with the file, in one line that does not name it."""


def read_yaml(path: Path) -> Any:
    """The file's document (None when it is empty)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlFileError(f"cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise YamlFileError(f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise YamlFileError(f"nested deeper than {MAX_NESTING} levels") from None
    too_deep = deepest_key(data) if isinstance(data, dict) else None
    if too_deep is not None:
        raise YamlFileError(f"{too_deep} is nested deeper than {MAX_NESTING} levels")
    return data


def deepest_key(data: dict[Any, Any]) -> str | None:
    """The first top-level key whose value nests deeper than MAX_NESTING, walked without recursion."""
    for key, value in data.items():
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > MAX_NESTING:
                return str(key)
            if isinstance(item, dict):
                stack.extend((inner, depth + 1) for inner in item.values())
            elif isinstance(item, list):
                stack.extend((inner, depth + 1) for inner in item)
    return None
