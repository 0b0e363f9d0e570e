"""llama.cpp built for this processor: build xllamacpp from its sdist once, cache it, load it.

The xllamacpp wheel on PyPI is portable (AVX2 at most). Built from its sdist
with `GGML_NATIVE=ON` it uses what this CPU has (AVX-512, VNNI, BF16). The
sdist's own build fetches llguidance (GitHub, cargo) and BoringSSL (Google's
git), which these machines cannot reach, so both are turned off through
`CMAKE_ARGS` (xllamacpp appends the user's arguments last and links without
the archives that were not built). Structured outputs then go through
llama.cpp's GBNF grammars (see `inference.engines.gbnf`).

The build is adopted only where it is faster: after compiling, a trial
decodes eight sequences at once with the native build and the portable wheel
in turn, on the packaged SmolLM2 as shipped (Q4_1) and widened to float16 (as
a worker serves it), and `build.json` records the speeds and whether the
native build won by `ADOPT_RATIO` on one and lost by as much on none. Batches
matter: on the development machine the native build decoded one sequence as
fast as the wheel, and eight float16 ones 1.6× as fast. Where
LLAMACPP_NATIVE=on, a ready build is loaded whatever its trial said.

One build per xllamacpp version, CPU feature set and build recipe, under
`<root>/xllamacpp-<version>-<cpu key>/`: `site/` (the unpacked wheel, put
first on `sys.path` by `activate`), `llama-server` (the same tree's server,
for benchmarks) and `build.json`, written last: a folder without it is not a
build. A build that failed writes `failed.json` and is not tried again by
itself (`manage.py build_llamacpp --force` does). A lock file keeps two
processes from building the same key at once; what a killed build left is
removed by the next one.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# The compiler flags that keep AMX out of a native build: llama.cpp's AMX kernels crash at their first
# matrix product (SIGSEGV at `ldtilecfg`, its tile configuration) on the AMX machines we run on, while
# AVX-512 with VNNI and BF16 serves the same models. GCC and Clang let an explicit -mno-* win over
# -march=native, whatever their order.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# CMake options of the native build: no GitHub-fetched parts, this CPU's instructions but AMX.
NATIVE_CMAKE_ARGS = (
    "-DLLAMA_LLGUIDANCE=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON"
    f" '-DCMAKE_C_FLAGS={NO_AMX}' '-DCMAKE_CXX_FLAGS={NO_AMX}'"
)
# The /proc/cpuinfo flags that change what ggml's CPU backend compiles to.
CPU_FLAGS = (
    "avx", "avx2", "f16c", "fma", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512cd", "avx512dq",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi", "avx512_fp16", "amx_tile", "amx_int8",
    "amx_bf16", "sse3", "ssse3", "sse4_1", "sse4_2",
)  # fmt: skip


# The native build replaces the wheel where it decodes this much faster (a trial's noise: a few %).
ADOPT_RATIO = 1.05
# One trial run in a fresh interpreter: argv = site folder ("" for the wheel), GGUF, threads. Eight
# sequences of 64 tokens decode together, twice; prints the better tokens/s.
TRIAL = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
import xllamacpp
params = xllamacpp.CommonParams()
params.model.path, params.n_parallel, params.n_ctx, params.verbosity = sys.argv[2], 8, 2048, 0
params.kv_unified = True
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[3])
server = xllamacpp.Server(params)
body = {"prompt": "A story about the sea:", "n_predict": 64, "ignore_eos": True, "temperature": 0,
        "cache_prompt": False}
server.handle_completions(body | {"n_predict": 4})
best = 0.0
for _ in range(2):
    with ThreadPoolExecutor(8) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(lambda _: server.handle_completions(body)["timings"]["predicted_n"], range(8)))
        best = max(best, tokens / (time.perf_counter() - started))
print(best)
"""


@dataclass(frozen=True)
class Build:
    """Which llama.cpp a process runs: `label` is what the start line and the admin show."""

    label: str  # "llama.cpp native avx512", "llama.cpp portable avx2"
    native: bool
    path: Path | None = None  # the cached build's folder (native only)


def cpu_flags() -> set[str]:
    """This CPU's flags (Linux); empty elsewhere, which turns the native build off."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_key(flags: set[str]) -> str:
    """A short name for what a build compiles to: its best level and a hash of its flags and recipe.

    The recipe (NATIVE_CMAKE_ARGS) is in the hash so that a build made, or failed, with other
    options is not taken for this one: a changed recipe builds once more.
    """
    relevant = sorted(flags & set(CPU_FLAGS))
    level = (
        "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "avx" if "avx" in flags else "sse"
    )
    recipe = [platform.machine(), *relevant, NATIVE_CMAKE_ARGS]
    digest = hashlib.sha256(" ".join(recipe).encode()).hexdigest()[:10]
    return f"{level}-{digest}"


def portable_version() -> str:
    return importlib.metadata.version("xllamacpp")


def build_dir(root: Path, version: str, key: str) -> Path:
    return root / f"xllamacpp-{version}-{key}"


def current_dir(root: Path) -> Path | None:
    """This machine's build folder for the installed xllamacpp; None where no native build applies."""
    flags = cpu_flags()
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64") or not flags:
        return None
    try:
        version = portable_version()
    except importlib.metadata.PackageNotFoundError:  # no xllamacpp installed: nothing to build for
        return None
    return build_dir(root, version, cpu_key(flags))


def is_ready(folder: Path) -> bool:
    return (folder / "build.json").is_file()


def is_adopted(folder: Path, forced: bool = False) -> bool:
    """Ready, and faster than the portable wheel in its trial (or `forced`: LLAMACPP_NATIVE=on)."""
    if not is_ready(folder):
        return False
    return forced or bool(json.loads((folder / "build.json").read_text()).get("adopted"))


def has_failed(folder: Path) -> bool:
    return (folder / "failed.json").is_file()


def set_aside(folder: Path, reason: str) -> None:
    """Stop loading a build that crashed a worker: it becomes a failed build (`build --force` makes it again).

    Its trial decodes one model; a fault on another model's path shows only when a worker runs it.
    """
    _write_json(folder / "failed.json", {"error": reason, "at": time.time()})
    (folder / "build.json").unlink(missing_ok=True)  # second: never neither ready nor failed (rebuilt)


def label(system_info: str, native: bool) -> str:
    """`llama.cpp native avx512` from llama.cpp's system info (`AVX512 = 1 | ...`)."""
    features = set(re.findall(r"(\w+) = 1", system_info))
    level = next((x for x in ("AVX512", "AVX2", "AVX") if x in features), "")
    return f"llama.cpp {'native' if native else 'portable'} {level.lower() or 'generic'}".rstrip()


def native_folder(root: Path, setting: str) -> Path | None:
    """The build folder a worker started with LLAMACPP_NATIVE=`setting` loads; None: the portable wheel.

    `off`: never; `auto`: a ready build that won its trial; `on`: any ready build.
    """
    folder = current_dir(root) if setting != "off" else None
    return folder if folder is not None and is_adopted(folder, forced=setting == "on") else None


def loads_native(root: Path, setting: str) -> bool:
    return native_folder(root, setting) is not None


def activate(root: Path, setting: str) -> bool:
    """Put this machine's native build first on sys.path where `setting` loads it; True if it was put there.

    Called before anything imports xllamacpp (the worker does it first thing);
    otherwise the installed portable wheel loads.
    """
    folder = None if "xllamacpp" in sys.modules else native_folder(root, setting)
    if folder is None:
        return False
    sys.path.insert(0, str(folder / "site"))
    return True


def loaded() -> Build:
    """The build this process imports: a cached native one (its `site/` beside build.json) or the wheel."""
    import xllamacpp

    folder = Path(xllamacpp.__file__).parent.parent.parent
    native = Path(xllamacpp.__file__).parent.parent.name == "site" and is_ready(folder)
    return Build(label(xllamacpp.get_system_info(), native), native, folder if native else None)


class BuildFailed(RuntimeError):
    pass


def build(root: Path, *, jobs: int, force: bool = False, log: TextIO = sys.stdout) -> Path:
    """Build this machine's native xllamacpp into `root` unless it is there; return its folder.

    Holds `<folder>.lock` while it works: a second caller waits, then finds the build.
    """
    folder = current_dir(root)
    if folder is None:
        raise BuildFailed("A native llama.cpp build is made on x86-64 Linux only.")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(folder) or (has_failed(folder) and not force):
            return folder
        for stale in [folder, *root.glob(f".{folder.name}.build-*")]:  # what a killed build left
            shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir()
        started = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder.name}.build-") as work:
                _build_into(folder, Path(work), jobs, log)
                built = _probe(folder)
                seconds = round(time.monotonic() - started)
                speeds = _trial(folder, Path(work))
        except Exception as exc:  # any failure is kept, so that no agent start tries it again by itself
            _write_json(folder / "failed.json", {"error": repr(exc), "at": time.time()})
            raise BuildFailed(f"The native llama.cpp build failed: {exc}") from exc
        info: dict[str, object] = {"seconds": seconds, "cmake_args": NATIVE_CMAKE_ARGS, "jobs": jobs}
        info |= {"label": built, "trial_tokens_per_s": speeds}
        info["adopted"] = is_faster(speeds)
        for model, pair in speeds.items():
            print(f"Trial, {model}: native {pair['native']} tok/s, portable {pair['portable']}.", file=log)
        _write_json(folder / "build.json", info)  # last: the folder is a build from now on
        return folder


def _build_into(folder: Path, work: Path, jobs: int, log: TextIO) -> None:
    """Download the sdist of the installed version, build its wheel natively, unpack it into `folder`."""
    pip = [sys.executable, "-m", "pip"]
    version = portable_version()
    run = _runner(log)
    run([*pip, "download", "--no-deps", "--no-binary", "xllamacpp", f"xllamacpp=={version}", "-d", str(work)])
    (sdist,) = work.glob("xllamacpp-*.tar.gz")
    unpack(sdist, work)
    source = work / f"xllamacpp-{version}"
    env = {**os.environ, "CMAKE_ARGS": NATIVE_CMAKE_ARGS, "NPROC": str(jobs)}
    run([*pip, "wheel", "-v", "--no-deps", "-w", str(work / "wheel"), str(source)], env=env)  # -v: progress
    (wheel,) = (work / "wheel").glob("xllamacpp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder / "site")
    server = source / "thirdparty/llama.cpp/build/bin/llama-server"
    if server.is_file():
        shutil.copy2(server, folder / "llama-server")


def unpack(sdist: Path, into: Path) -> None:
    """Unpack the sdist into `into`; a member that would land outside it refuses the build.

    Python 3.11.4 and later check this themselves (`filter="data"`); before, every member is
    checked here first (Debian 12's Python is 3.11.2).
    """
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, filter="data")
            return
        root = into.resolve()
        for member in archive.getmembers():
            path = (root / member.name).resolve()
            targets = [path]  # a link's own path and what it points at both stay inside
            if member.issym() or member.islnk():
                targets.append(((root if member.islnk() else path.parent) / member.linkname).resolve())
            plain = member.isfile() or member.isdir() or member.issym() or member.islnk()
            if not plain or not all(target.is_relative_to(root) for target in targets):
                raise BuildFailed(f"the sdist has a member outside its folder, or a device: {member.name}")
        archive.extractall(into)


def _runner(log: TextIO) -> Callable[..., None]:
    def run(command: list[str], env: dict[str, str] | None = None) -> None:
        print("$", " ".join(command), file=log, flush=True)
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)

    return run


def _probe(folder: Path) -> str:
    """Import the built module in a fresh interpreter; its label, or BuildFailed if it does not load."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import xllamacpp; print(xllamacpp.get_system_info())"
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder / "site")], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise BuildFailed(f"the built xllamacpp does not load: {_failure(done)}")
    return label(done.stdout, native=True)


def _failure(done: subprocess.CompletedProcess[str]) -> str:
    """Why a trial process failed: its last words, or the signal that killed it (a crash says nothing)."""
    said = done.stderr.strip()[-500:]
    if done.returncode < 0:
        return f"killed by {signal.Signals(-done.returncode).name}" + (f": {said}" if said else "")
    return said or f"exit status {done.returncode}"


def is_faster(speeds: dict[str, dict[str, float]]) -> bool:
    """The native build won its trial by ADOPT_RATIO on one model and lost by as much on none."""
    wins = any(pair["native"] >= ADOPT_RATIO * pair["portable"] for pair in speeds.values())
    return wins and all(pair["native"] * ADOPT_RATIO >= pair["portable"] for pair in speeds.values())


def _trial(folder: Path, work: Path) -> dict[str, dict[str, float]]:
    """Batched decode tok/s of the native build and the wheel, per model, each the best of two turns about."""
    from inference.loading import gguf_for_llamacpp, packaged_model_path

    packaged = packaged_model_path("smollm2-135m-instruct")
    models = {"q4_1": packaged, "float16": gguf_for_llamacpp(packaged, "float16", cache_dir=work)}
    speeds = {model: {"native": 0.0, "portable": 0.0} for model in models}
    for _ in range(2):
        for model, gguf in models.items():
            for name, site in (("native", str(folder / "site")), ("portable", "")):
                command = [sys.executable, "-c", TRIAL, site, str(gguf), str(os.cpu_count() or 1)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    raise BuildFailed(f"the {name} build did not generate: {_failure(done)}")
                speeds[model][name] = max(speeds[model][name], round(float(done.stdout.split()[-1]), 1))
    return speeds


def _write_json(path: Path, data: dict[str, object]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)
