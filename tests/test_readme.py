"""The README stays short, and its code examples (and the docs' ones) stay valid."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from dstar_flwr import DStar, InterceptedStrategy

from .fake_grid import FakeGrid, FakeNode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_TEXT = README.read_text(encoding="utf-8")
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
BLOCKS = BLOCK.findall(README_TEXT)
# Docs whose examples are moved out of the README: each must still compile and import.
DOCS = ("attacks.md", "faults.md", "deployment.md")
DOC_BLOCKS = [
    (name, block)
    for name in DOCS
    for block in BLOCK.findall((ROOT / "docs" / name).read_text(encoding="utf-8"))
]


def _block(marker: str) -> str:
    return next(block for block in BLOCKS if marker in block)


def test_the_readme_is_short() -> None:
    assert len(README_TEXT.splitlines()) <= 250


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 4


def _compile_imports(block: str, filename: str) -> None:
    tree = ast.parse(block)
    imports = ast.Module(
        body=[node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)],
        type_ignores=[],
    )
    assert imports.body, "each example shows its imports"
    exec(compile(imports, filename, "exec"), {})


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_each_example_compiles_and_its_imports_resolve(block: str) -> None:
    _compile_imports(block, str(README))


@pytest.mark.parametrize(
    ("name", "block"), DOC_BLOCKS, ids=[f"{n}:{b.splitlines()[0][:30]}" for n, b in DOC_BLOCKS]
)
def test_each_docs_example_compiles_and_its_imports_resolve(name: str, block: str) -> None:
    _compile_imports(block, f"docs/{name}")


def test_the_pure_rule_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block("dstar_aggregate("), str(README), "exec"), namespace)
    result = namespace["result"]
    assert len(result.accepted) + len(result.rejected) == 9  # type: ignore[attr-defined]


def test_the_intercepted_strategy_example_builds_its_strategy() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block("InterceptedStrategy("), str(README), "exec"), namespace)
    assert isinstance(namespace["strategy"], InterceptedStrategy)


def test_the_omniscient_adversary_example_builds_its_strategy() -> None:
    block = next(block for name, block in DOC_BLOCKS if "OmniscientAttack(" in block)
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/attacks.md", "exec"), namespace)
    assert isinstance(namespace["strategy"], InterceptedStrategy)


def _node(seed: int, attacker: bool = False):
    """A node replying to the README's model: honest steps, or large Gaussian noise."""
    rng = np.random.default_rng(seed)

    def respond(message: Message) -> RecordDict:
        if message.metadata.message_type != "train":
            return RecordDict({"metrics": MetricRecord({"eval-acc": 0.5, "num-examples": 10})})
        scale = 10.0 if attacker else 0.01
        trained = {}
        for name, array in message.content["arrays"].items():
            current = array.numpy()
            step = scale * rng.normal(size=current.shape)
            trained[name] = Array((current + step).astype(current.dtype))
        return RecordDict(
            {
                "arrays": ArrayRecord(trained),
                "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 10}),
            }
        )

    return respond


def test_the_message_api_example_runs_against_a_scripted_grid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    block = _block("strategy.start(")
    assert "num_rounds=10," in block
    block = block.replace("num_rounds=10,", "num_rounds=2,")
    namespace: dict[str, object] = {"build_my_model": lambda: torch.nn.Linear(4, 2)}
    exec(compile(block, str(README), "exec"), namespace)

    results = []

    class RecordingDStar(DStar):
        """The README's DStar, keeping what ``start`` returns."""

        def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            result = super().start(*args, **kwargs)
            results.append(result)
            return result

    namespace["DStar"] = RecordingDStar
    # 8 nodes: k = ceil(0.8 * 8) = 7. Node 1 sends noise, node 8 straggles.
    nodes = {n: FakeNode(0.01 * n, _node(n)) for n in range(2, 8)}
    nodes[1] = FakeNode(0.005, _node(1, attacker=True))
    nodes[8] = FakeNode(1.5, _node(8))
    grid = FakeGrid(nodes)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})

    namespace["main"](grid, context)  # type: ignore[operator]

    (result,) = results
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    first = result.train_metrics_clientapp[1]
    assert first["k"] == 7 and first["skipped"] == 0
    assert first["late-node-ids"] == [8]
    assert 1 in first["rejected-node-ids"]
    final = result.arrays
    assert sorted(final) == ["bias", "weight"]
    assert all(np.all(np.isfinite(final[name].numpy())) for name in final)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:1] == [f"1 {first['rejected-node-ids']} [8]"]
    assert len(printed) == 2 and printed[1].startswith("2 ")
    assert grid.stored == 0
