"""Casola's agent DAGs as decisions (gateway/agent_dag.py): the checks, the order, the templates and
the tolerance, as tables."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from gateway.agent_dag import DagError, MapNode, TemplateError, outputs_of, parse_dag, resolve, within_tolerance

tasks = ("openai/chat-completion", "fal/text-to-image")


def task(**extra: Any) -> dict[str, Any]:
    return {"model_id": "m", "task": "fal/text-to-image", "payload": {"prompt": "p"}, **extra}


def test_nodes_run_after_what_they_read_and_what_their_edges_say() -> None:
    dag = parse_dag(
        {
            "nodes": {
                "summary": task(task="openai/chat-completion", payload={"content": "${nodes.images.result.items}"}),
                "images": {"type": "map", "items": "${nodes.seed.result.list}", "node": task()},
                "seed": task(),
                "last": task(),
            },
            "edges": [["summary", "last"], {"from": "seed", "to": "images"}],
        },
        tasks,
    )
    assert dag.order.index("seed") < dag.order.index("images") < dag.order.index("summary") < dag.order.index("last")
    assert dag.depends_on["summary"] == {"images"} and dag.depends_on["last"] == {"summary"}
    images = dag.nodes["images"]
    assert isinstance(images, MapNode) and images.max_concurrency == 4 and images.tolerance == 0


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (None, "dag.nodes"),
        ({"nodes": {}}, "dag.nodes"),
        ({"nodes": {f"n{i}": task() for i in range(33)}}, "dag.nodes"),
        ({"nodes": {"a b": task()}}, "dag.nodes.a b"),
        ({"nodes": {"a": task(type="loop")}}, "dag.nodes.a.type"),
        ({"nodes": {"a": task(model_id="")}}, "dag.nodes.a.model_id"),
        ({"nodes": {"a": task(task="x/y")}}, "dag.nodes.a.task"),
        ({"nodes": {"a": task(payload=[1])}}, "dag.nodes.a.payload"),
        ({"nodes": {"a": task(outputs="images")}}, "dag.nodes.a.outputs"),
        ({"nodes": {"a": {"type": "map", "items": "all", "node": task()}}}, "dag.nodes.a.items"),
        (
            {"nodes": {"a": {"type": "map", "items": "${input.x}", "node": task(), "max_concurrency": 0}}},
            "dag.nodes.a.max_concurrency",
        ),
        (
            {"nodes": {"a": {"type": "map", "items": "${input.x}", "node": task(), "tolerance": -0.1}}},
            "dag.nodes.a.tolerance",
        ),
        ({"nodes": {"a": {"type": "map", "items": "${input.x}", "node": {"type": "map"}}}}, "dag.nodes.a.node"),
        ({"nodes": {"a": task()}, "edges": [["a", "b"]]}, "dag.edges[0]"),
        ({"nodes": {"a": task()}, "edges": "a->b"}, "dag.edges"),
        ({"nodes": {"a": task(), "b": task()}, "edges": [["a", "b"], ["b", "a"]]}, "dag.edges"),
        ({"nodes": {"a": task(payload={"p": "${nodes.a.result}"})}}, "dag.nodes.a"),
        ({"nodes": {"a": task(payload={"p": "${nodes.zz.result}"})}}, "dag.nodes.a"),
    ],
)
def test_a_dag_that_cannot_run_names_its_field(raw: Any, param: str) -> None:
    with pytest.raises(DagError) as refused:
        parse_dag(raw, tasks)
    assert refused.value.param == param


def test_templates_keep_a_whole_values_type_and_fill_text_and_expand_each() -> None:
    scope = {
        "input": {"prompts": ["a", "b"], "n": 2},
        "nodes": {"gen": {"result": {"items": [{"url": "u1"}, {"url": "u2"}]}}},
    }
    payload = {
        "all": "${input.prompts}",
        "count": "${input.n}",
        "text": "n=${input.n}, first=${input.prompts[0]}",
        "messages": [
            {"role": "system", "content": "Summarize."},
            {"$each": "${nodes.gen.result.items}", "template": {"role": "user", "content": "Item: ${item.url}"}},
        ],
    }
    assert resolve(payload, scope) == {
        "all": ["a", "b"],
        "count": 2,
        "text": "n=2, first=a",
        "messages": [
            {"role": "system", "content": "Summarize."},
            {"role": "user", "content": "Item: u1"},
            {"role": "user", "content": "Item: u2"},
        ],
    }
    assert resolve({"prompt": "${item}"}, {"item": "x"}) == {"prompt": "x"}


@pytest.mark.parametrize(
    "value", ["${input.missing}", "${input.prompts[5]}", "${item.url}", "${}", [{"$each": "${input.n}", "template": 1}]]
)
def test_a_template_naming_nothing_fails_its_node(value: Any) -> None:
    with pytest.raises(TemplateError):
        resolve(value, {"input": {"prompts": ["a"], "n": 2}, "item": "plain"})


@pytest.mark.parametrize(
    ("failed", "total", "tolerance", "ok"),
    [
        (0, 0, Fraction(0), True),
        (0, 3, Fraction(0), True),
        (1, 3, Fraction(0), False),
        (1, 3, Fraction("0.5"), True),
        (2, 3, Fraction("0.5"), False),
        (1, 2, Fraction("0.5"), True),
        (3, 3, Fraction(1), True),
    ],
)
def test_a_map_succeeds_within_its_tolerance(failed: int, total: int, tolerance: Fraction, ok: bool) -> None:
    assert within_tolerance(failed, total, tolerance) is ok


def test_outputs_pick_paths_from_the_result() -> None:
    result = {"images": [{"url": "u"}], "usage": {}}
    assert outputs_of(result, ()) == result
    assert outputs_of(result, ("images[0].url",)) == {"images[0].url": "u"}
    with pytest.raises(TemplateError):
        outputs_of(result, ("video.url",))
