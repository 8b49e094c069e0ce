"""Every third-party module the package imports is a declared dependency (or an optional one,
imported only where a missing install is caught and explained)."""

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifargen"
# Import names that differ from their distribution's name on PyPI.
DISTRIBUTION_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "torch_fidelity": "torch-fidelity"}
# Optional: imported inside ``try: ... except ImportError`` with a message naming the install.
OPTIONAL = {"torch_fidelity", "tensorboard", "starlette", "uvicorn"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].strip().lower()
            for requirement in project["dependencies"]}


def test_every_third_party_import_is_a_declared_dependency():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    imported = set().union(*(imported_modules(path) for path in PACKAGE.rglob("*.py")))
    third_party = {name for name in imported if name not in stdlib and name != "cifargen"} - OPTIONAL - {"tomli"}
    declared = declared_distributions()
    missing = sorted(name for name in third_party if DISTRIBUTION_OF.get(name, name).lower() not in declared)
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"
    assert "tomli" in declared  # the TOML reader on Python 3.10


def test_the_check_catches_an_undeclared_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import os\nfrom scipy import linalg\nimport yaml\nfrom .data import x\n")
    assert imported_modules(source) == {"os", "scipy", "yaml"}


def test_optional_imports_are_guarded():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError"
                                                 for h in node.handlers):
                continue
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in OPTIONAL for a in node.names):
                guarded = any(isinstance(parent, ast.Try) and node in ast.walk(parent) for parent in ast.walk(tree)
                              if isinstance(parent, ast.Try) and any(
                                  isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in parent.handlers))
                assert guarded, f"{path.name}: optional import of {[a.name for a in node.names]} is not guarded"


def test_committed_results_and_documents_hold_no_machine_paths_or_development_rounds():
    machine_path = re.compile(r'"(/work|/root|/home|/Users|/tmp)/|[A-Z]:\\\\Users')
    rounds = re.compile(r"\b[Ss]ession \d|\bround \d|\bissue #?\d", re.IGNORECASE)
    offenders = []
    files = [*ROOT.glob("results/**/*.json"), *ROOT.glob("results/*.txt"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
             *ROOT.glob("benchmarks/*"), *PACKAGE.rglob("*.py")]
    for path in files:
        text = path.read_text(errors="ignore")
        if machine_path.search(text) or rounds.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"machine paths or development rounds in: {offenders}"
