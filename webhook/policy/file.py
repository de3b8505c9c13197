"""Policy files as YAML text: parse keeping line numbers, refuse keys written twice.

Authors and auditors read the file, so every message points at a line of it: the loader's
errors (shown in the log and /readyz when a reload is refused) and every `policy lint` finding.
"""
from __future__ import annotations

import datetime as dt

import yaml


class PolicyError(Exception):
    """A policy file is invalid; the previous policies stay in force."""

    def __init__(self, message: str, *, line: int = 0):
        super().__init__(message)
        self.line = line


def read_document(raw: bytes | str, path: str = "<inline>"):
    """Parse YAML keeping the node tree (for line numbers). A key written twice in one mapping
    is refused: YAML would silently keep the last one, so a reviewer could read one waivers
    list while another is in force."""
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError(f"{path}: empty policy file")
        dup = duplicate_key(node)
        if dup:
            line = dup.start_mark.line + 1
            raise PolicyError(f"{path}:{line}: key {dup.value!r} is written twice in the same "
                              "mapping", line=line)
        return loader.construct_document(node), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise PolicyError(f"{path}{f':{line}' if line else ''}: not valid YAML: "
                          f"{getattr(e, 'problem', None) or e}", line=line) from e
    finally:
        loader.dispose()


def duplicate_key(node):
    """The first key node that repeats a key of the same mapping, anywhere in the tree."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    return k
                seen.add(k.value)
            found = duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = duplicate_key(v)
            if found:
                return found
    return None


def node_at(node, path) -> tuple[object, bool]:
    """The deepest YAML node along a JSON path (keys and indexes), and whether it got there."""
    for part in path:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            return node, False
        node = nxt
    return node, True


def line_of(node, path) -> int:
    """1-based line of the value at a JSON path (or of the nearest enclosing node); 0 without a
    node tree."""
    if node is None:
        return 0
    if path and isinstance(path[-1], str):
        parent, ok = node_at(node, list(path)[:-1])
        if ok and isinstance(parent, yaml.MappingNode):
            for k, _v in parent.value:
                if getattr(k, "value", None) == path[-1]:
                    return k.start_mark.line + 1
    found, _ok = node_at(node, path)
    return found.start_mark.line + 1


def dates_to_text(value):
    """YAML reads `expires: 2026-03-01` as a date; the schema speaks of strings."""
    if isinstance(value, dict):
        return {k: dates_to_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [dates_to_text(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value
