"""Casola's agent DAGs, pure: checking a DAG as a client sends it, the order its nodes run in, the
templates of their payloads, and whether a map node's failures are within its tolerance. No IO; the
runner (gateway/agent_runs.py) does the running.

A DAG is ``{"nodes": {id: node}, "edges": [[from, to] | {"from", "to"}]}``. A node is a task
(``model_id``, ``task``, ``payload`` or ``inputs``, optional ``outputs``: paths into its result) or a
``map`` (``items``: a template resolving to an array, ``node``: the task run once per item,
``max_concurrency``, ``tolerance``: the fraction of items allowed to fail). Templates: ``${input.x}``,
``${item}``, ``${item.field}``, ``${nodes.<id>.result...}`` (with ``[n]`` indexes); a string that is
one template takes the value's own type, one with text around takes its text. ``{"$each": template,
"template": value}`` inside a list expands to one value per element (``${item}`` each time).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import msgspec

nodes_max = 32
edges_max = 256
map_items_max = 100  # sub-jobs one map node runs
map_concurrency_default, map_concurrency_max = 4, 16
node_id_pattern = re.compile(r"[A-Za-z0-9_-]{1,64}")
_template = re.compile(r"\$\{([^}]*)\}")
_path_part = re.compile(r"([A-Za-z0-9_-]+)|\[(\d+)\]")


class DagError(Exception):
    """A DAG that cannot be run as sent: a 400 naming the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class TemplateError(Exception):
    """A template that names nothing at run time (a missing input, an index past the end): the node fails."""


@dataclass(frozen=True, slots=True)
class TaskNode:
    model_id: str
    task: str
    payload: dict[str, Any]
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MapNode:
    items: str
    node: TaskNode
    max_concurrency: int
    tolerance: Fraction


@dataclass(frozen=True, slots=True)
class Dag:
    nodes: dict[str, TaskNode | MapNode]
    order: tuple[str, ...]  # every node after the nodes it depends on
    depends_on: dict[str, frozenset[str]]


def _task(raw: Any, param: str, tasks: Collection[str]) -> TaskNode:
    if not isinstance(raw, dict):
        raise DagError(f"{param} must be an object.", param)
    model_id, task = raw.get("model_id"), raw.get("task")
    if not isinstance(model_id, str) or not model_id:
        raise DagError(f"{param}.model_id must name a model.", f"{param}.model_id")
    if task not in tasks:
        raise DagError(f"{param}.task must be one of {', '.join(tasks)}.", f"{param}.task")
    payload = raw.get("payload", raw.get("inputs", {}))
    if not isinstance(payload, dict):
        raise DagError(f"{param}.payload must be an object.", f"{param}.payload")
    outputs = raw.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs):
        raise DagError(f"{param}.outputs must be a list of paths into the result.", f"{param}.outputs")
    return TaskNode(str(model_id), str(task), payload, tuple(outputs))


def _map(raw: dict[str, Any], param: str, tasks: Collection[str]) -> MapNode:
    items = raw.get("items")
    if not isinstance(items, str) or not _template.search(items):
        raise DagError(
            f"{param}.items must be a template resolving to an array, e.g. ${{input.prompts}}.", f"{param}.items"
        )
    concurrency = raw.get("max_concurrency", map_concurrency_default)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= map_concurrency_max:
        raise DagError(
            f"{param}.max_concurrency must be an integer from 1 to {map_concurrency_max}.", f"{param}.max_concurrency"
        )
    tolerance = raw.get("tolerance", 0)
    if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not 0 <= tolerance <= 1:
        raise DagError(f"{param}.tolerance must be a number from 0 to 1.", f"{param}.tolerance")
    inner = raw.get("node")
    if isinstance(inner, dict) and inner.get("type", "task") != "task":
        raise DagError(f"{param}.node must be a task node (maps do not nest).", f"{param}.node")
    return MapNode(items, _task(inner, f"{param}.node", tasks), concurrency, Fraction(str(tolerance)))


def _references(value: Any) -> set[str]:
    """The nodes a value's templates read (``${nodes.<id>...}``)."""
    found: set[str] = set()
    if isinstance(value, str):
        for expression in _template.findall(value):
            parts = expression.strip().split(".")
            if len(parts) >= 2 and parts[0] == "nodes":
                found.add(parts[1].split("[")[0])
    elif isinstance(value, dict):
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


def _edges(raw: Any, ids: Collection[str]) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > edges_max:
        raise DagError(f"dag.edges must be a list of at most {edges_max} [from, to] pairs.", "dag.edges")
    edges = []
    for index, edge in enumerate(raw):
        pair = (edge.get("from"), edge.get("to")) if isinstance(edge, dict) else edge
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(p in ids for p in pair):
            raise DagError(f"dag.edges[{index}] must join two nodes of the DAG.", f"dag.edges[{index}]")
        edges.append((str(pair[0]), str(pair[1])))
    return edges


def parse_dag(raw: Any, tasks: Collection[str]) -> Dag:
    """The DAG as sent, checked: every node well formed, every edge and ``${nodes...}`` reference to a
    node of the DAG, and no cycle."""
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), dict) or not raw["nodes"]:
        raise DagError("dag.nodes must be an object of at least one node, by id.", "dag.nodes")
    if len(raw["nodes"]) > nodes_max:
        raise DagError(f"A DAG has at most {nodes_max} nodes.", "dag.nodes")
    nodes: dict[str, TaskNode | MapNode] = {}
    for node_id, node in raw["nodes"].items():
        param = f"dag.nodes.{node_id}"
        if not node_id_pattern.fullmatch(node_id):
            raise DagError("Node ids are 1 to 64 letters, digits, '_' or '-'.", param)
        if not isinstance(node, dict):
            raise DagError(f"{param} must be an object.", param)
        kind = node.get("type", "task")
        if kind == "map":
            nodes[node_id] = _map(node, param, tasks)
        elif kind == "task":
            nodes[node_id] = _task(node, param, tasks)
        else:
            raise DagError(f"{param}.type must be task or map.", f"{param}.type")
    depends: dict[str, set[str]] = {node_id: set() for node_id in nodes}
    for before, after in _edges(raw.get("edges"), nodes):
        depends[after].add(before)
    for node_id, node in nodes.items():
        read = (
            _references(node.items) | _references(node.node.payload)
            if isinstance(node, MapNode)
            else _references(node.payload)
        )
        unknown = read - set(nodes)
        if unknown or node_id in read:
            raise DagError(
                f"dag.nodes.{node_id} reads a node that is not before it: {', '.join(sorted(unknown or {node_id}))}.",
                f"dag.nodes.{node_id}",
            )
        depends[node_id] |= read
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in placed and depends[n] <= placed]
        if not ready:
            raise DagError("The DAG has a cycle.", "dag.edges")
        order += ready
        placed |= set(ready)
    return Dag(nodes, tuple(order), {n: frozenset(d) for n, d in depends.items()})


def lookup(expression: str, scope: dict[str, Any]) -> Any:
    value: Any = scope
    parts = _path_part.findall(expression.strip())
    if not parts:
        raise TemplateError(f"${{{expression}}} names nothing")
    for name, index in parts:
        if name:
            if not isinstance(value, dict) or name not in value:
                raise TemplateError(f"${{{expression}}}: no '{name}'")
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise TemplateError(f"${{{expression}}}: no item {index}")
            value = value[int(index)]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def resolve(value: Any, scope: dict[str, Any]) -> Any:
    """``value`` with its templates filled from ``scope`` (``input``, ``item``, ``nodes``)."""
    if isinstance(value, str):
        whole = _template.fullmatch(value)
        if whole:
            return lookup(whole.group(1), scope)
        return _template.sub(lambda match: _text(lookup(match.group(1), scope)), value)
    if isinstance(value, dict):
        return {key: resolve(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        expanded: list[Any] = []
        for item in value:
            if isinstance(item, dict) and "$each" in item:
                elements = resolve(item["$each"], scope)
                if not isinstance(elements, list):
                    raise TemplateError("$each must resolve to an array")
                expanded += [resolve(item.get("template"), {**scope, "item": element}) for element in elements]
            else:
                expanded.append(resolve(item, scope))
        return expanded
    return value


def within_tolerance(failed: int, total: int, tolerance: Fraction) -> bool:
    """Whether a map node with ``failed`` of ``total`` items failed still succeeds."""
    return total == 0 or Fraction(failed, total) <= tolerance


def outputs_of(result: Any, paths: tuple[str, ...]) -> Any:
    """A task node's result: the whole of it, or the values its ``outputs`` name (by path)."""
    if not paths:
        return result
    return {path: lookup(path, result if isinstance(result, dict) else {}) for path in paths}
