"""No import circles among the modules of eval/ and opsd/ (imports inside functions included)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_edges(packages=("eval", "opsd")):
    """{module: modules of these packages it imports}, every import statement of the file."""
    files = {}
    for pkg in packages:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {}
    for mod, path in files.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]) if node.level \
                    else node.module
                names.update([base.strip(".")] + [f"{base.strip('.')}.{a.name}" for a in node.names])
        # each name -> the longest module of ours it starts with
        edges[mod] = {next(c for c in (".".join(n.split(".")[:k]) for k in range(n.count(".") + 1, 0, -1))
                           if c in files) for n in names if n.split(".")[0] in packages} - {mod}
    return edges


def cycles(edges):
    """Every elementary cycle, each once (rotated to start at its smallest module)."""
    found = set()

    def walk(start, node, path):
        for nxt in edges[node]:
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:
                walk(start, nxt, path + [nxt])

    for m in sorted(edges):
        walk(m, m, [m])
    return found


def test_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}


def test_no_import_circles():
    edges = import_edges()
    assert len(edges) > 50 and edges["eval.run"]  # the scan found the modules and their imports
    assert cycles(edges) == set()
