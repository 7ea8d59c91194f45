"""The packages' import graph: no cycles, and layers that only point down.

Every ``import`` statement counts, also those inside functions (a late import is still a
dependency, and a cycle held together by late imports is still a cycle). The graph is read with
``ast`` from the source files, so nothing is imported and the test needs no optional package.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package name → its folder
PACKAGES = {"rpl_perception": REPO / "rpl_perception", "rpl_training": REPO / "training" / "rpl_training"}

#: The layers, lowest first: (layer, {group: module prefixes}); docs/layers.md shows the same table
#: (test_the_documented_table_is_this_one). A module may import its own group
#: and any lower layer; a sideways import (another group of its own layer) or an upward one is an
#: error unless it is listed in ALLOWED below. Within a group, only cycles are errors.
LAYERS: List[Tuple[str, Dict[str, Tuple[str, ...]]]] = [
    ("core", {"core": ("rpl_perception.labels", "rpl_perception.resources", "rpl_perception.image",
                       "rpl_perception.scoring", "rpl_perception.calibration", "rpl_perception.models",
                       "rpl_perception.checkpoint", "rpl_perception.export", "rpl_perception.export_forms",
                       "rpl_perception.parity", "rpl_perception.files", "rpl_perception.visualize",
                       "rpl_perception.image_codec", "rpl_perception.topics", "rpl_perception.corridor",
                       "rpl_perception.anomaly_objects", "rpl_perception.ground_projection",
                       "rpl_perception.persistence", "rpl_perception.obstacles")}),
    ("backends", {"backends": ("rpl_perception.backends",)}),
    # the package's own __init__ is the facade that re-exports AnomalySegmenter
    ("segmenter", {"segmenter": ("rpl_perception.segmenter", "rpl_perception")}),
    ("applications", {"ros": ("rpl_perception.ros",), "eval": ("rpl_perception.eval",),
                      "training": ("rpl_training",)}),
    ("command line", {"commands": ("rpl_perception.commands", "rpl_perception.cli")}),
]

#: (importer prefix, imported prefix) → why this arrow is allowed
ALLOWED: Dict[Tuple[str, str], str] = {
    ("rpl_training", "rpl_perception.eval"):
        "training validates with the evaluation's dataset readers, metrics and suite",
    ("rpl_perception.eval.live", "rpl_perception.ros.parameters"):
        "the live evaluation starts anomaly_node with parameters named from the node's own (ROS-free) table",
}


def _module_files(package: str, root: Path) -> Dict[str, Tuple[Path, bool]]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph() -> Dict[str, Set[str]]:
    """module → the modules of :data:`PACKAGES` it imports (``from pkg import mod`` → ``pkg.mod``)."""
    modules = {}
    for package, root in PACKAGES.items():
        modules.update(_module_files(package, root))
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> Optional[Tuple[int, str]]:
    """(layer index, group) of the longest matching prefix; None for an unlisted module."""
    best, length = None, -1
    for index, (_, groups) in enumerate(LAYERS):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                    best, length = (index, group), len(prefix)
    return best


def _allowed(importer: str, imported: str) -> bool:
    return any((importer == a or importer.startswith(a + ".")) and (imported == b or imported.startswith(b + "."))
               for a, b in ALLOWED)


def bad_arrows(graph) -> List[str]:
    """Upward and sideways imports, as readable lines."""
    problems = []
    for importer, targets in sorted(graph.items()):
        source = layer_of(importer)
        for imported in sorted(targets):
            target = layer_of(imported)
            if source is None or target is None or _allowed(importer, imported):
                continue
            if target[0] > source[0]:
                problems.append(f"{importer} ({LAYERS[source[0]][0]}) imports {imported} "
                                f"({LAYERS[target[0]][0]}): upward")
            elif target[0] == source[0] and target[1] != source[1]:
                problems.append(f"{importer} imports {imported}: sideways within {LAYERS[source[0]][0]}")
    return problems


def cycles(graph) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), allowed arrows left out."""
    edges = {m: sorted(t for t in targets if not _allowed(m, t)) for m, targets in graph.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_is_read(graph):
    # a sample of arrows that must be there, so that a broken reader cannot pass the checks below
    assert "rpl_perception.models" in graph["rpl_perception.checkpoint.model_file"]
    assert "rpl_perception.segmenter" in graph["rpl_perception.eval.offline"] or \
        "rpl_perception.backends" in graph["rpl_perception.eval.offline"]
    assert "rpl_perception.image" in graph["rpl_training.datasets"]
    assert all(layer_of(module) is not None for module in graph), \
        [m for m in graph if layer_of(m) is None]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_layers_point_down(graph):
    assert bad_arrows(graph) == []


def test_the_checks_catch_what_they_are_for():
    fake = {"rpl_perception.image": {"rpl_perception.segmenter"},
            "rpl_perception.segmenter": {"rpl_perception.image"},
            "rpl_perception.ros.node": {"rpl_perception.eval.bags"},
            "rpl_perception.eval.offline": {"rpl_perception.commands"},
            "rpl_perception.eval.bags": set(), "rpl_perception.commands": set()}
    assert cycles(fake) == [["rpl_perception.image", "rpl_perception.segmenter"]]
    assert bad_arrows(fake) == [
        "rpl_perception.eval.offline (applications) imports rpl_perception.commands (command line): upward",
        "rpl_perception.image (core) imports rpl_perception.segmenter (segmenter): upward",
        "rpl_perception.ros.node imports rpl_perception.eval.bags: sideways within applications",
    ]


def test_reading_a_bag_needs_no_ros_module(graph):
    seen, todo = set(), ["rpl_perception.eval.bags", "rpl_perception.eval.frames", "rpl_perception.eval.recorded"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    assert "rpl_perception.image_codec" in seen
    assert sorted(m for m in seen if m.startswith("rpl_perception.ros")) == []


def test_the_documented_table_is_this_one():
    rows = [line.split("|")[1:4] for line in (REPO / "docs" / "layers.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    documented = [(layer.strip(), group.strip(), tuple(m.strip(" `") for m in modules.split(",")))
                  for layer, group, modules in rows]
    assert documented == [(layer, group, prefixes) for layer, groups in LAYERS for group, prefixes in groups.items()]
