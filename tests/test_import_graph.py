"""The layout, enforced: the imports of pipeline/, data_prep/, train/ and eval/ (read with ast,
function-level imports included, so a cycle cannot hide behind a lazy import) form no cycle;
the core library (pipeline/ outside pipeline/commands/) imports no stage and no command; no
stage imports another stage."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("pipeline", "data_prep", "train", "eval")
STAGES = ("data_prep", "train", "eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from package import module` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import pipeline.x.y` of a non-module -> pipeline.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def top(module: str) -> str:
    return module.split(".")[0]


def is_core(module: str) -> bool:
    return top(module) == "pipeline" and not (module + ".").startswith("pipeline.commands.")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            if is_core(src) and (top(dst) in STAGES or dst.startswith("pipeline.commands")):
                bad.append(f"core {src} imports {dst}")
            if top(src) in STAGES and top(dst) in STAGES and top(src) != top(dst):
                bad.append(f"stage {src} imports another stage's {dst}")
    return bad


def test_the_package_imports_form_no_cycle():
    edges = graph()
    assert len(edges) > 40 and any(edges.values())  # the walk really found the modules and their imports
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_core_imports_no_stage_and_no_stage_imports_another():
    assert layer_violations(graph()) == []


def test_the_checks_catch_what_they_name():
    cyclic = {"pipeline.model": {"pipeline.hf"}, "pipeline.hf": {"pipeline.checkpoint"},
              "pipeline.checkpoint": {"pipeline.model"}}
    assert find_cycle(cyclic) == ["pipeline.checkpoint", "pipeline.model", "pipeline.hf", "pipeline.checkpoint"]
    assert layer_violations({"pipeline.shards": {"train.loader"}, "eval.watch": {"train.rundir"},
                             "pipeline.config": {"pipeline.commands.demo"},
                             "pipeline.commands.run": {"train", "pipeline.config"}}) == [
        "stage eval.watch imports another stage's train.rundir",
        "core pipeline.config imports pipeline.commands.demo", "core pipeline.shards imports train.loader"]


def test_function_level_and_package_imports_are_seen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline import hf\n    import train.loader\n    from eval import EXIT\n")
    known = {"pipeline", "pipeline.hf", "train", "train.loader", "eval"}
    assert imports(src, "pipeline.m", known) == {"pipeline.hf", "train.loader", "eval"}
