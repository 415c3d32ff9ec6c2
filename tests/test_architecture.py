"""The house rules of docs/architecture.md, read from the code: no two modules import each other (a
function-level import counts: it is still a dependency), nothing imports the CLI, no module takes
another's private names, and `reports` stays below `properties` and `gradaudit`."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gradaudit", "properties", "reports", "oracles", "reference_impl")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, wherever it stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            # `from pkg import mod` imports the module pkg.mod
            out += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in MODULES]
            out.append((base, [n for n in names if f"{base}.{n}" not in MODULES]))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for mod, _ in _imports(name, path):
            while mod and mod not in MODULES:
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                deps.add(mod)
        graph[name] = deps
    return graph


def test_no_two_modules_import_each_other():
    graph, cycles = _graph(), []
    # a package's __init__ and its modules are one unit here only when the __init__ hands names on
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not node.startswith(dep + "."):  # a module importing its own package is not a loop
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_cli_and_reports_stays_below():
    for name, path in MODULES.items():
        for mod, _ in _imports(name, path):
            assert not (mod == "gradaudit.cli" and name != "gradaudit.__main__"), f"{name} imports the CLI"
            if name.startswith("reports"):
                assert mod.split(".")[0] not in ("properties", "gradaudit", "oracles", "torch", "jax"), \
                    f"{name} imports {mod}"


def test_no_module_takes_another_modules_private_names():
    bad = []
    for name, path in MODULES.items():
        if name.startswith("reference_impl"):  # its _common helpers are shared inside the package by design
            continue
        for mod, names in _imports(name, path):
            bad += [f"{name}: {n} from {mod}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_module_is_too_long_to_hold_one_job():
    """A module over 450 lines has grown a second job (docs/architecture.md; the search and record
    assembly of properties/runner.py at most 350): split it along that job."""
    limits = {"properties.runner": 350}
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > limits.get(name, 450)}
    assert not long, f"modules over their line limit: {long}"
