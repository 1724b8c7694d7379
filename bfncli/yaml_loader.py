"""YAML as bfn reads it: safe, strict about duplicate keys, and with YAML 1.2's plain scalars.

PyYAML follows YAML 1.1, where ``no``, ``off``, ``yes`` and ``on`` are booleans: a config saying
``mixed_precision: no`` (the documented value) would read as ``false``. bfn takes only
``true``/``false`` as booleans, so that words stay words; fields that are booleans still accept
``no``/``yes`` (pydantic reads those strings). Numbers are YAML 1.2's too: ``010`` is ten (not
octal eight), ``1e-3`` is a number, ``1:30`` and ``2024-01-01`` are strings (not 90 and a date);
``1_000_000`` keeps its underscores as digit separators, and ``0x``/``0o`` prefixes work.

A key given twice in one mapping is an error instead of the second silently replacing the first (a
second ``train:`` section would drop the first one's settings). Nothing is ever constructed from tags: this is ``yaml.SafeLoader`` underneath.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML12_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$")
_YAML12_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                               |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                               |[-+]?\.(?:inf|Inf|INF)
                               |\.(?:nan|NaN|NAN))$""", re.X)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans and numbers, and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with '<<' may be overridden: that is what merging is for
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"key '{key}' appears twice (first at line {seen[key].line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _construct_int(loader, node) -> int:
    """YAML 1.2 integers: decimal (leading zeros are not octal), 0o octal, 0x hexadecimal."""
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith(("0x", "0o")):
        return sign * int(text[2:], 16 if text[1] == "x" else 8)
    return sign * int(text, 10)


# YAML 1.1's booleans (yes/no/on/off/y/n), numbers (octal 010, sexagesimal 1:30, floats that need a
# dot) and timestamps out; YAML 1.2's core-schema booleans and numbers in.
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))
StrictLoader.add_implicit_resolver(_INT_TAG, _YAML12_INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+0123456789."))
StrictLoader.add_constructor(_INT_TAG, _construct_int)


def load(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader`; raises ``yaml.YAMLError`` like ``yaml.safe_load``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def describe_error(err: yaml.YAMLError) -> str:
    """' at line L, column C: problem' for a YAML error, as one line."""
    where = getattr(err, "problem_mark", None)
    at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
    problem = getattr(err, "problem", None) or "invalid YAML"
    return f"{at}: {problem}"
