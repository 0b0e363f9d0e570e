"""The native llama.cpp build cache: once per CPU and version, failures kept, leftovers removed.

The compile itself (minutes) is stood in for; `manage.py build_llamacpp` runs it for real.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from inference.engines import llamacpp_build

pytest.importorskip("xllamacpp")
AVX512 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | AVX512 = 1 | AVX512_VNNI = 1 | OPENMP = 1 |"


def test_a_build_is_named_by_what_the_cpu_has_and_labelled_by_what_llama_cpp_compiled() -> None:
    assert llamacpp_build.cpu_key({"avx", "avx2", "avx512f", "lm"}).startswith("avx512-")
    assert llamacpp_build.cpu_key({"avx", "avx2", "lm"}) == llamacpp_build.cpu_key({"avx", "avx2", "ht"})
    assert llamacpp_build.cpu_key({"avx", "avx2"}) != llamacpp_build.cpu_key({"avx", "avx2", "avx_vnni"})
    assert llamacpp_build.label(AVX512, native=True) == "llama.cpp native avx512"
    assert (
        llamacpp_build.label("CPU : AVX = 1 | AVX2 = 1 | AVX512 = 0 |", native=False)
        == "llama.cpp portable avx2"
    )


def test_a_build_with_another_recipe_is_another_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build made, or failed, with other CMake arguments is not taken for this one."""
    flags = {"avx", "avx2", "avx512f", "amx_tile"}
    key = llamacpp_build.cpu_key(flags)
    monkeypatch.setattr(llamacpp_build, "NATIVE_CMAKE_ARGS", "-DGGML_NATIVE=ON")
    assert llamacpp_build.cpu_key(flags) != key


def test_the_native_build_leaves_amx_out_and_nothing_else_march_native_turns_on() -> None:
    """The flags reach both compilers as one argument each (xllamacpp splits CMAKE_ARGS with shlex)."""
    arguments = shlex.split(llamacpp_build.NATIVE_CMAKE_ARGS)
    no_amx = llamacpp_build.NO_AMX
    assert {f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}", "-DGGML_NATIVE=ON"} <= set(arguments)
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc here")

    def macros(*flags: str) -> set[str]:
        command = [compiler, *flags, "-march=native", "-dM", "-E", "-"]
        return set(
            subprocess.run(command, input="", capture_output=True, text=True, check=True).stdout.splitlines()
        )

    native, built = macros(), macros(*no_amx.split())
    assert not any("AMX" in line for line in built)
    assert all("AMX" in line for line in native - built)


def test_a_trial_that_crashed_says_which_signal_killed_it() -> None:
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert llamacpp_build._failure(done) == "killed by SIGSEGV"
    failed = subprocess.run(
        [sys.executable, "-c", "raise SystemExit('no model')"], capture_output=True, text=True
    )
    assert llamacpp_build._failure(failed) == "no model"


def test_a_build_is_made_once_and_a_failed_one_is_kept_until_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    failing = [True]

    def stand_in(folder: Path, work: Path, jobs: int, log: object) -> None:
        calls.append(folder.name)
        if failing[0]:
            raise subprocess.CalledProcessError(1, ["pip", "wheel"])
        (folder / "site").mkdir()

    monkeypatch.setattr(llamacpp_build, "_build_into", stand_in)
    monkeypatch.setattr(llamacpp_build, "_probe", lambda folder: "llama.cpp native avx512")
    speeds = {"float16": {"native": 30.0, "portable": 20.0}}
    monkeypatch.setattr(llamacpp_build, "_trial", lambda folder, work: speeds)
    folder = llamacpp_build.current_dir(tmp_path)
    assert folder is not None
    left = tmp_path / f".{folder.name}.build-killed"
    left.mkdir(parents=True)  # what a killed build leaves
    with pytest.raises(llamacpp_build.BuildFailed):
        llamacpp_build.build(tmp_path, jobs=1)
    assert llamacpp_build.has_failed(folder)
    assert not left.exists()
    assert llamacpp_build.build(tmp_path, jobs=1) == folder  # not retried by itself
    assert len(calls) == 1
    failing[0] = False
    llamacpp_build.build(tmp_path, jobs=1, force=True)
    assert llamacpp_build.is_ready(folder)
    assert not llamacpp_build.has_failed(folder)
    llamacpp_build.build(tmp_path, jobs=1, force=True)  # ready: never rebuilt
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("native", "adopted"),
    [
        ((200.0, 209.0), False),  # within the noise on both
        ((200.0, 320.0), True),  # float16 batches 1.6× as fast, Q4_1 alike: what this machine measured
        ((180.0, 320.0), False),  # faster on one, slower on the other
        ((150.0, 140.0), False),
    ],
)
def test_a_build_is_adopted_only_where_its_trial_decoded_faster_than_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: tuple[float, float], adopted: bool
) -> None:
    speeds = {
        "q4_1": {"native": native[0], "portable": 200.0},
        "float16": {"native": native[1], "portable": 200.0},
    }
    monkeypatch.setattr(llamacpp_build, "_build_into", lambda folder, work, jobs, log: None)
    monkeypatch.setattr(llamacpp_build, "_probe", lambda folder: "llama.cpp native avx512")
    monkeypatch.setattr(llamacpp_build, "_trial", lambda folder, work: speeds)
    folder = llamacpp_build.build(tmp_path, jobs=1, log=io.StringIO())
    info = json.loads((folder / "build.json").read_text())
    assert info["trial_tokens_per_s"] == speeds
    assert info["adopted"] is adopted
    assert llamacpp_build.loads_native(tmp_path, "auto") is adopted
    assert llamacpp_build.loads_native(tmp_path, "on")  # loaded all the same
    assert not llamacpp_build.loads_native(tmp_path, "off")


def test_a_build_set_aside_is_a_failed_build_until_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Path] = []
    monkeypatch.setattr(llamacpp_build, "_build_into", lambda folder, work, jobs, log: built.append(folder))
    monkeypatch.setattr(llamacpp_build, "_probe", lambda folder: "llama.cpp native avx512")
    monkeypatch.setattr(
        llamacpp_build, "_trial", lambda folder, work: {"m": {"native": 2.0, "portable": 1.0}}
    )
    folder = llamacpp_build.build(tmp_path, jobs=1, log=io.StringIO())
    assert llamacpp_build.loads_native(tmp_path, "auto")
    llamacpp_build.set_aside(folder, "node-1/smol-1 killed by SIGSEGV on this build")
    assert not llamacpp_build.loads_native(tmp_path, "on")
    assert llamacpp_build.has_failed(folder)
    llamacpp_build.build(tmp_path, jobs=1, log=io.StringIO())
    assert len(built) == 1  # not built again by itself
    llamacpp_build.build(tmp_path, jobs=1, force=True, log=io.StringIO())
    assert len(built) == 2
    assert llamacpp_build.loads_native(tmp_path, "auto")
    assert not llamacpp_build.has_failed(folder)


def test_the_trial_decodes_with_the_wheel_and_prints_its_speed() -> None:
    """The trial's script run for real, on the portable wheel (the native side is the same with its site)."""
    from inference.loading import packaged_model_path

    gguf = packaged_model_path("smollm2-135m-instruct")
    command = [sys.executable, "-c", llamacpp_build.TRIAL, "", str(gguf), "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert float(done.stdout.split()[-1]) > 1.0  # tokens a second


def tar_with(path: Path, name: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = 7
        archive.addfile(info, io.BytesIO(b"print()"))
    return path


@pytest.mark.parametrize("filters", [True, False], ids=["python-3.11.4+", "python-3.11.2"])
def test_the_sdist_is_unpacked_inside_its_folder_and_nowhere_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: bool
) -> None:
    if not filters:  # Debian 12's Python has no extraction filters: our own check runs
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    llamacpp_build.unpack(tar_with(tmp_path / "good.tar.gz", "xllamacpp-1/setup.py"), tmp_path / "a")
    assert (tmp_path / "a/xllamacpp-1/setup.py").read_bytes() == b"print()"
    evil = tar_with(tmp_path / "evil.tar.gz", "xllamacpp-1/../../outside.py")
    refused = (llamacpp_build.BuildFailed, tarfile.TarError)  # TarError: Python's own filter (a FilterError)
    with pytest.raises(refused):
        llamacpp_build.unpack(evil, tmp_path / "b" / "c")
    assert not (tmp_path / "outside.py").exists()
    with tarfile.open(tmp_path / "link.tar", "w") as archive:  # a link placed outside, pointing inside
        link = tarfile.TarInfo("../outside-link")
        link.type, link.linkname = tarfile.SYMTYPE, "xllamacpp-1/setup.py"
        archive.addfile(link)
    with pytest.raises(refused):
        llamacpp_build.unpack(tmp_path / "link.tar", tmp_path / "d" / "e")
    assert not (tmp_path / "d" / "outside-link").exists()
