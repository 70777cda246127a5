"""Start the real `tritonserver` (bundled in the nvidia-pytriton wheel) on a model repository.

`running_server(repo, ...)` is what `serve.stack.running_stack` (`bertforge serve`, bench, tests) starts first:
it checks the platform, builds the python-backend folder, sets the environment the stub needs
(../shared/PLATFORM.md, "Real Triton on this machine"), picks free ports when asked (port 0), waits for
readiness, and always stops the server by its PID (SIGTERM, then SIGKILL; serve/process.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bertforge import contract
from bertforge.served_model import CONFIG_FILE, served_models
from bertforge.versions import installed_version
from serve.process import ManagedProcess, log_tail, url_host

MIN_GLIBC = (2, 35)
READY_TIMEOUT_S = contract.READY_TIMEOUT_S
STOP_TIMEOUT_S = 10.0  # beyond Triton's own --exit-timeout-secs, then SIGKILL
RESTART_STOP_TIMEOUT_S = 2.0  # drain before a healing restart, then SIGKILL
EXIT_TIMEOUT_SECS = 10  # Triton's own grace period for in-flight requests at shutdown



class LaunchError(RuntimeError):
    """tritonserver cannot run here or did not become ready; the message says why and what to do."""


@dataclass
class Endpoints:
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int

    @property
    def grpc_url(self) -> str:
        return f"{self._address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._address}:{self.metrics_port}/metrics"

    @property
    def _address(self) -> str:
        return url_host(self.host)


@contextlib.contextmanager
def running_server(
    repo: str | Path,
    host: str = contract.DEFAULT_HOST,
    grpc_port: int = contract.DEFAULT_GRPC_PORT,
    http_port: int = contract.DEFAULT_HTTP_PORT,
    metrics_port: int = contract.DEFAULT_METRICS_PORT,
    log_path: str | Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    extra_args: tuple[str, ...] = (),
    keep_workdir: bool = False,
    exit_timeout_s: int = EXIT_TIMEOUT_SECS,
) -> Iterator[TritonServer]:
    """Context manager: a ready tritonserver on `repo`; port 0 means "pick a free one".

    Its work folder (backend links, default log) is removed after a clean exit; it stays for a
    failure, whose message names the log in it, and always with `keep_workdir`.
    """
    server = TritonServer(repo, host, grpc_port, http_port, metrics_port, log_path, extra_args, exit_timeout_s)
    clean_exit = False
    try:
        server.start(ready_timeout_s)
        yield server
        clean_exit = True
    finally:
        server.stop()
        if clean_exit and not keep_workdir:
            shutil.rmtree(server.workdir, ignore_errors=True)


class TritonServer:
    def __init__(self, repo: str | Path, host: str, grpc_port: int, http_port: int, metrics_port: int,
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 exit_timeout_s: int = EXIT_TIMEOUT_SECS):
        self.repo = Path(repo).resolve()
        self.requested = (host, grpc_port, http_port, metrics_port)
        self.extra_args = tuple(extra_args)
        self.exit_timeout_s = exit_timeout_s  # Triton's grace for in-flight requests at SIGTERM
        self.workdir = Path(tempfile.mkdtemp(prefix="bertforge-triton-"))
        self.log_path = Path(log_path) if log_path else self.workdir / "tritonserver.log"
        self.process: ManagedProcess | None = None
        self.endpoints: Endpoints | None = None
        self._restarting = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> Endpoints:
        """Launch and wait until ready; retries with new ports if auto-chosen ones were taken meanwhile."""
        check_platform()
        check_repository(self.repo)
        backend_dir = prepare_backend_dir(self.workdir / "backends")
        attempts = 3 if 0 in self.requested[1:] else 1
        for attempt in range(attempts):
            self.endpoints = _choose_ports(*self.requested)
            command = server_command(self.repo, backend_dir, self.endpoints, self.extra_args, self.exit_timeout_s)
            # its own session: a SIGKILL reaches its python stubs too; a restart keeps the old log
            self.process = ManagedProcess.start("tritonserver", command, self.log_path, env=server_environment(),
                                                own_session=True, append_log=self._restarting)
            try:
                self._wait_ready(ready_timeout_s)
                return self.endpoints
            except LaunchError:
                self.stop()
                if attempt + 1 == attempts or "address already in use" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")

    def restart(self, ready_timeout_s: float = READY_TIMEOUT_S, stop_timeout_s: float = RESTART_STOP_TIMEOUT_S) -> Endpoints:
        """Stop (if still running) and start again on the SAME ports (serve/supervisor.py heals with this).

        A short grace: a server with a dead stub waits its whole --exit-timeout-secs for that model at SIGTERM."""
        self.stop(stop_timeout_s)
        self.requested = (self.endpoints.host, self.endpoints.grpc_port, self.endpoints.http_port,
                          self.endpoints.metrics_port)
        self._restarting = True
        return self.start(ready_timeout_s)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it drains in-flight requests for exit_timeout_s), SIGKILL after `timeout_s`
        (default: exit_timeout_s + STOP_TIMEOUT_S). Returns its exit code."""
        if self.process is None:
            return None
        return self.process.stop(self.exit_timeout_s + STOP_TIMEOUT_S if timeout_s is None else timeout_s)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints.http_url}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def _wait_ready(self, timeout_s: float) -> None:
        self.process.wait_until(lambda: True if self.is_ready() else None, timeout_s, "it was ready", LaunchError,
                                poll_s=0.2)


def server_command(repo: Path, backend_dir: Path, endpoints: Endpoints, extra_args: tuple[str, ...] = (),
                   exit_timeout_s: int = EXIT_TIMEOUT_SECS) -> list[str]:
    host = endpoints.host
    return [
        str(tritonserver_root() / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=none",
        f"--grpc-address={host}", f"--grpc-port={endpoints.grpc_port}",
        f"--http-address={host}", f"--http-port={endpoints.http_port}",
        f"--metrics-address={host}", f"--metrics-port={endpoints.metrics_port}",
        "--allow-gpu-metrics=false",
        "--exit-on-error=true", "--strict-readiness=true", f"--exit-timeout-secs={exit_timeout_s}",
        *extra_args,
    ]


# tritonserver flags that would break what bertforge manages, and what to use instead
_MANAGED_FLAGS = {
    "--model-repository": "--repo", "--model-store": "--repo",
    "--grpc-port": "--grpc-port", "--http-port": "--http-port", "--metrics-port": "--metrics-port",
    "--grpc-address": "--host", "--http-address": "--host", "--metrics-address": "--host",
    "--backend-directory": "nothing (bertforge builds the python backend folder)",
    "--allow-grpc": "nothing (the API and bertforge's readiness check need gRPC and HTTP)",
    "--allow-http": "nothing (the API and bertforge's readiness check need gRPC and HTTP)",
    "--load-model": "--repo (every model of the repository is served)",
}


def check_passthrough(args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The tritonserver flags given after `--`, refused (LaunchError naming the bertforge flag) where they
    would break what bertforge manages: ports, addresses, the repository, model control, the backend folder."""
    args = list(args)
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            if index == 0:
                raise LaunchError(f"pass-through argument {arg!r}: give tritonserver flags, e.g. "
                                  "`bertforge serve -- --log-verbose=1`")
            continue  # the value of the flag before it (`--trace-config mode=triton`)
        name, equals, value = arg.partition("=")
        if not equals and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        if name == "--model-control-mode":
            if value != "none":
                raise LaunchError(f"pass-through {name} {value}: bertforge serves a fixed repository "
                                  "(--model-control-mode=none); restart `bertforge serve` to change models")
            continue
        if name in _MANAGED_FLAGS:
            raise LaunchError(f"pass-through {name} is managed by bertforge; use {_MANAGED_FLAGS[name]} instead")
    return tuple(args)


def server_environment() -> dict[str, str]:
    """LD_LIBRARY_PATH: this Python's libpython + the wheel's bundled libs; PATH: this venv's bin first."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(_site_packages() / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def prepare_backend_dir(folder: Path) -> Path:
    """`<folder>/python/` with links to libtriton_python.so, its utils and this Python's stub."""
    root = tritonserver_root()
    python_dir = Path(folder) / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        link = python_dir / name
        if not link.exists():
            link.symlink_to(source)
    return Path(folder)


def check_platform() -> None:
    """Raise LaunchError naming the missing requirement (glibc, shared libpython, numpy<2, the wheel)."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not Linux/glibc (macOS, Windows, musl)
        libc = None
    version = tuple(int(part) for part in libc.split()[-1].split(".")[:2]) if libc and libc.startswith("glibc") else None
    if version is None or version < MIN_GLIBC:
        raise LaunchError(f"tritonserver from nvidia-pytriton needs glibc >= 2.35 (found {libc or 'no glibc'}); "
                          "use a newer Linux (Debian 12, Ubuntu 22.04+) or NVIDIA's Triton container (docs/serve.md)")
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / library).is_file():
        raise LaunchError(f"the Triton python stub needs a shared libpython, but {sys.executable} was built without "
                          "one; rebuild it with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    numpy_version = installed_version("numpy")
    if numpy_version and int(numpy_version.split(".")[0]) >= 2:
        raise LaunchError(f"numpy {numpy_version} is installed; the bundled Triton python backend returns empty "
                          "outputs with numpy 2. Run `pip install 'numpy<2'` in this environment")
    if not (tritonserver_root() / "bin" / "tritonserver").is_file():
        raise LaunchError("tritonserver binary not found; run `pip install nvidia-pytriton==0.7.0`")
    if not (tritonserver_root() / "python_backend_stubs" / _python_version()).is_dir():
        raise LaunchError(f"nvidia-pytriton has no python backend stub for Python {_python_version()}")


def check_repository(repo: Path) -> None:
    """A clear message for the common mistakes before Triton prints pages of errors."""
    if not repo.is_dir():
        raise LaunchError(f"model repository not found: {repo}; run `bertforge export --model DIR --repo {repo}`")
    models = served_models(repo)
    if not models:
        raise LaunchError(f"{repo} holds no model (no */{CONFIG_FILE})")
    missing = [path for model in models for path in model.missing_files()]
    if missing:
        raise LaunchError(f"{repo} is missing {', '.join(missing)}: the weights are not committed; "
                          f"run `bertforge export --model DIR --repo {repo}` first")


def free_port(host: str = contract.DEFAULT_HOST) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def tritonserver_root() -> Path:
    return _site_packages() / "pytriton" / "tritonserver"


def _choose_ports(host: str, grpc_port: int, http_port: int, metrics_port: int) -> Endpoints:
    chosen: list[int] = []
    for port in (grpc_port, http_port, metrics_port):
        while port == 0 or port in chosen:
            port = free_port(host)
        chosen.append(port)
    return Endpoints(host, *chosen)


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
