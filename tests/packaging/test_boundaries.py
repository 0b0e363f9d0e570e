"""The package boundaries DESIGN.md draws, read from the source's imports (deferred ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT

PACKAGES = ("portal", "registry", "fleet", "inference", "signing")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, resolved to absolute names."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources(package: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in sources(package)
        for name in sorted(imports_of(path))
        if name.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("registry", ("portal",)),  # helpers both need live in a neutral package (signing)
        # The standalone signed client imports signing: no Django.
        ("signing", ("django", "portal", "registry", "fleet", "inference")),
        ("inference/protocol", ("django", "portal", "registry", "fleet")),  # one Django-free parser
    ],
)
def test_package_does_not_import(package, forbidden):
    assert offending(package, forbidden) == []


def test_the_check_sees_deferred_and_relative_imports(tmp_path, monkeypatch):
    module = REPO_ROOT / "registry" / "services" / "dispatch.py"
    names = imports_of(module)
    assert "registry.models" in names  # an absolute import at the top
    source = "def f():\n    from portal.gateway import upstream\n    from . import cache\n"
    fake = tmp_path / "registry" / "services" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(f"{__name__}.REPO_ROOT", tmp_path)
    assert {"portal.gateway.upstream", "registry.services.cache"} <= imports_of(fake)
