"""A built wheel carries every app of the project: its code, migrations and static files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings

from tests.processes import REPO_ROOT

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        ".",
    ]
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=240)
    (built,) = out.glob("modelportal-*.whl")
    return built


def project_apps() -> list:
    return [
        app
        for app in apps.get_app_configs()
        if Path(app.path).is_relative_to(settings.BASE_DIR) and "site-packages" not in Path(app.path).parts
    ]


def test_the_wheel_holds_every_app_with_its_migrations_and_static_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for app in project_apps():
        folder = Path(app.path).relative_to(settings.BASE_DIR)
        assert f"{folder.as_posix()}/__init__.py" in names, app.name
        for kind in ("migrations", "static"):
            local = sorted(
                p for p in (Path(app.path) / kind).rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
            missing = [p for p in local if p.relative_to(settings.BASE_DIR).as_posix() not in names]
            assert not missing, f"{app.name}: {kind} files missing from the wheel: {missing[:5]}"


def test_every_app_imports_from_the_unpacked_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    modules = [app.name for app in project_apps()]
    code = "import importlib, sys; [print(importlib.import_module(m).__file__) for m in sys.argv[1:]]"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert all(line.startswith(str(tmp_path)) for line in done.stdout.splitlines()), done.stdout
    assert len(done.stdout.splitlines()) == len(modules)
