"""Helpers shared by the client-compatibility flows (seed_flows.py, keys_flows.py).

A flow is a sequence of named steps run by a Runner: each prints "ok: <step>",
"FAIL: <step>" (with the evidence) or "skip: <step>", and the summary line
"N passed, M failed" decides the exit status. A step the pinned client
cannot do at all (an option it lacks) prints "skip: <step> (<reason>)" and
is counted apart, without failing the run. The clients run as subprocesses
through run_command, always with a timeout and an environment from
isolated_env, so nothing on the host can steer them.
"""

import hashlib
import json
import os
import pty
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

# Every client call gets a hard limit so a hung server fails the run
# instead of hanging CI until its own much longer timeout.
TIMEOUT = 120


class StepFailed(Exception):
    """A step's assertion failed; the message carries the evidence."""


class Skipped(Exception):
    """A step could not run because an earlier step it needs failed."""


class Cmd:
    """The outcome of one CLI invocation, kept for error reports."""

    def __init__(self, argv, rc, stdout, stderr):
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    def describe(self):
        return (
            f"command: {' '.join(self.argv)}\n"
            f"exit status: {self.rc}\n"
            f"stdout:\n{indent(self.stdout)}\n"
            f"stderr:\n{indent(self.stderr)}"
        )


def indent(text):
    text = text.rstrip("\n")
    if not text:
        return "    (empty)"
    return "\n".join("    " + line for line in text.splitlines())


class Runner:
    """Counts steps and keeps going after a failure so one run shows all failures."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.unsupported = 0

    def step(self, name, fn, *needs):
        """Runs fn() as a step named name and returns its result, or None.

        needs are results of earlier steps; if any of them is None, the
        step is skipped because the state it would act on does not exist.
        """
        if any(n is None for n in needs):
            self.skipped += 1
            print(f"skip: {name} (an earlier step it depends on failed)", flush=True)
            return None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - every failure must be reported, not crash the run.
            self.failed += 1
            print(f"FAIL: {name}", flush=True)
            if isinstance(e, StepFailed):
                print(indent(str(e)), flush=True)
            else:
                print(indent(traceback.format_exc()), flush=True)
            return None
        self.passed += 1
        print(f"ok: {name}", flush=True)
        # A step that passes but has nothing to hand on still counts as done.
        return True if result is None else result

    def not_supported(self, name, reason):
        """Reports a step the client under test cannot do at all.

        This is a property of the pinned client, not a server failure, so it
        does not fail the run; the reason says what is missing.
        """
        self.unsupported += 1
        print(f"skip: {name} ({reason})", flush=True)

    def summary(self):
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        if self.unsupported:
            line += f", {self.unsupported} not supported by the client"
        print(line, flush=True)
        return 0 if self.failed == 0 and self.skipped == 0 else 1


def qcow2_virtual_size(data):
    """Reads the virtual disk size from a qcow2 header, or None for other data.

    Glance inspects uploaded qcow2 data and records the disk's virtual size,
    so the expected value comes straight from the header the server parses:
    the magic "QFI\\xfb" and, at offset 24, the size as a big-endian u64.
    """
    if len(data) < 32 or data[:4] != b"QFI\xfb":
        return None
    return int.from_bytes(data[24:32], "big")


def to_text(value):
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def isolated_env(workdir):
    """Builds an environment in which the clients see no host configuration.

    OS_* variables would redirect the clients to another cloud or change
    their auth, and a clouds.yaml in the home or config directory would be
    merged into their settings, so HOME and XDG_CONFIG_HOME point into the
    scratch directory. glanceclient also caches schemas under ~/.glanceclient,
    which must not leak between runs against different server builds.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    home = Path(workdir) / "home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    # The server is on loopback; a host proxy setting must not intercept it.
    for var in ("no_proxy", "NO_PROXY"):
        env[var] = "127.0.0.1,localhost"
    # Tables wider than the default 80 columns keep values on one line.
    env["COLUMNS"] = "250"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def expect(cond, message, cmd=None):
    if not cond:
        if cmd is not None:
            message = f"{message}\n{cmd.describe()}"
        raise StepFailed(message)


def expect_eq(actual, expected, what, cmd=None):
    expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}", cmd)


def parse_table(text):
    """Parses glanceclient's two-column "Property | Value" table into a dict.

    prettytable wraps long values onto continuation rows whose first column
    is empty, so those are joined back onto the previous property.
    """
    result = {}
    last = None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|", 1)]
        if len(cells) != 2:
            continue
        key, value = cells
        if key == "Property" and value == "Value":
            continue
        if key:
            result[key] = value
            last = key
        elif last is not None:
            result[last] += value
    return result


def parse_json(cmd):
    try:
        return json.loads(cmd.stdout)
    except json.JSONDecodeError as e:
        raise StepFailed(f"stdout is not JSON ({e})\n{cmd.describe()}") from None


def file_digests(path):
    data = Path(path).read_bytes()
    return len(data), hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()


def find_tool(name):
    """Finds a client CLI next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StepFailed(f"{name} is not installed next to {sys.executable} or on PATH")
    return found


def run_command(argv, env, cwd, check=True, terminal=False):
    """Runs a command with the given environment and the global timeout.

    stdin is empty (/dev/null), or with terminal a pseudo-terminal nobody
    types into, as when an operator runs the command in a shell: some
    commands (glanceclient's image-create-via-import) take any stdin that is
    not a terminal for image data.

    Returns a Cmd; raises StepFailed on a timeout, and on a non-zero exit
    status unless check is false.
    """
    primary = secondary = None
    if terminal:
        primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=secondary if terminal else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        cmd = Cmd(argv, "timeout", to_text(e.stdout), to_text(e.stderr))
        raise StepFailed(f"timed out after {TIMEOUT} s\n{cmd.describe()}") from None
    finally:
        if terminal:
            os.close(primary)
            os.close(secondary)
    cmd = Cmd(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise StepFailed(f"exited with status {proc.returncode}\n{cmd.describe()}")
    return cmd
