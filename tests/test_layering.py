"""Dependencies run one way: rembert_ref <- converters <- validation <- rembert_convert (the CLI).

Every import statement of our packages is read with `ast`, function-local imports included, so a lazy
import against the layering fails here as well as a top-level one."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each product package and the packages of ours it may import. Testing tools (testkit) are never imported
# by product code.
ALLOWED = {
    "rembert_ref": {"rembert_ref"},
    "converters": {"rembert_ref", "converters"},
    "validation": {"rembert_ref", "converters", "validation"},
    "rembert_convert": {"rembert_ref", "converters", "validation", "rembert_convert"},
}
OURS = set(ALLOWED) | {"testkit", "tests", "benchmarks", "examples", "scripts"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add(path.relative_to(ROOT).parts[0])  # a relative import stays inside its package
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) - ALLOWED[package]) for f in files}
    assert {f: bad for f, bad in wrong.items() if bad} == {}


def test_the_checker_sees_a_lazy_import_against_the_layering(tmp_path: Path) -> None:
    module = ROOT / "rembert_ref" / "_layering_probe_tmp.py"
    module.write_text("def f():\n    from converters.mapping import RULES\n    return RULES\n")
    try:
        assert imported_packages(module) == {"converters"}
    finally:
        module.unlink()


def test_shipped_probe_corpus_is_what_the_generator_writes() -> None:
    from testkit.spm_models import probe_corpus_document

    shipped = json.loads((ROOT / "converters" / "probe_corpus.json").read_text(encoding="utf-8"))
    assert shipped == probe_corpus_document()
