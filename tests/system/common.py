"""Helpers shared by the system tests (full_disk.py, crash_loop.py, crowd.py, shutdown.py).

Each test drives the real `ocellus` binary as a separate process on a
127.0.0.1 ephemeral port. Everything here is bounded: every request has a
timeout, every wait has a deadline, and a Server is always stopped by its
owner in a `finally`.
"""

import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
DEFAULT_TIMEOUT = 10.0


def log(message):
    print(message, flush=True)


def install_sigterm():
    """Turns SIGTERM (e.g. from `timeout`) into KeyboardInterrupt, so the
    tests' `finally` blocks still stop servers, unmount and remove temp dirs."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, handler)


def _die_with_parent():
    """In the child before exec: SIGKILL it if the test process dies, so a
    test killed outright (SIGKILL) leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port():
    """A port the kernel just handed out; racy only against other processes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env():
    """The environment for the server: no OCELLUS_* setting from the caller's
    shell (OCELLUS_LOG excepted) can change what is being tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCELLUS_") or k == "OCELLUS_LOG"}
    return env


def help_text(binary, *args):
    try:
        out = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return ""


def has_command(binary, name):
    """True if `BINARY --help` lists the subcommand `name`."""
    for line in help_text(binary).splitlines():
        words = line.split()
        if words and words[0] == name and line.startswith("  "):
            return True
    return False


def serve_flags(binary):
    """The long flags `BINARY serve --help` documents, e.g. {"--max-uploads", ...}."""
    flags = set()
    for line in help_text(binary, "serve").splitlines():
        for word in line.split():
            if word.startswith("--"):
                flags.add(word.rstrip(","))
    return flags


def supported_args(binary, wanted):
    """Keeps the (flag, value) pairs the binary knows; prints a note for the
    others, so an older binary still starts and the test checks what it can."""
    known = serve_flags(binary)
    args = []
    for flag, value in wanted:
        if flag in known:
            args += [flag, str(value)]
        else:
            log(f"note: {binary} has no {flag}; starting without it (the contract checks will fail)")
    return args


def run_check(binary, data_dir, timeout=300):
    """Runs `BINARY check --data-dir DIR`; returns (exit status, output, seconds)."""
    start = time.monotonic()
    try:
        out = subprocess.run(
            [binary, "check", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=timeout, env=clean_env(),
        )
        return out.returncode, (out.stdout + out.stderr).strip(), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, f"check did not finish within {timeout} s", time.monotonic() - start


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict with lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:200]!r}>"


class NotSent(Exception):
    """The connection was refused: the server never saw the request."""


def request(port, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
    """One request on a new connection. Returns a Response once the whole body
    has been read. Raises NotSent if the connection was refused, and the
    underlying OSError/HTTPException for anything else (the outcome is then
    unknown)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError as e:
            raise NotSent(str(e)) from e
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class Api:
    """Thin Glance v2 client on one port."""

    def __init__(self, port, timeout=DEFAULT_TIMEOUT):
        self.port = port
        self.timeout = timeout

    def call(self, method, path, body=None, headers=None, timeout=None):
        return request(self.port, method, path, body, headers, timeout or self.timeout)

    def create(self, name, **props):
        body = {"name": name, "disk_format": "raw", "container_format": "bare", **props}
        return self.call("POST", "/v2/images", body)

    def upload(self, image_id, data, timeout=None):
        return self.call("PUT", f"/v2/images/{image_id}/file", data,
                         {"Content-Type": "application/octet-stream"}, timeout)

    def patch(self, image_id, ops):
        return self.call("PATCH", f"/v2/images/{image_id}", json.dumps(ops).encode(),
                         {"Content-Type": PATCH_TYPE})

    def add_props(self, image_id, props):
        return self.patch(image_id, [{"op": "add", "path": f"/{k}", "value": v} for k, v in props.items()])

    def get(self, image_id):
        return self.call("GET", f"/v2/images/{image_id}")

    def delete(self, image_id):
        return self.call("DELETE", f"/v2/images/{image_id}")

    def download(self, image_id, timeout=60):
        return self.call("GET", f"/v2/images/{image_id}/file", timeout=timeout)

    def healthcheck(self, timeout=5):
        return self.call("GET", "/healthcheck", timeout=timeout)

    def list_all(self, page=200, max_pages=1000):
        """Every image, following `next`; bounded by max_pages."""
        images = []
        path = f"/v2/images?limit={page}"
        for _ in range(max_pages):
            resp = self.call("GET", path, timeout=30)
            if resp.status != 200:
                raise AssertionError(f"GET {path} answered {resp.status}: {resp.body[:300]!r}")
            doc = resp.json()
            images += doc["images"]
            nxt = doc.get("next")
            if not nxt or not doc["images"]:
                return images
            path = nxt
        raise AssertionError(f"listing did not end within {max_pages} pages")


class Server:
    """One `ocellus serve` process; its output goes to log_path."""

    def __init__(self, binary, data_dir, log_path, extra_args=(), port=None, env=None):
        self.binary = binary
        self.env = dict(env or {})
        self.data_dir = str(data_dir)
        self.log_path = str(log_path)
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.proc = None
        self.api = Api(self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, wait=30.0):
        argv = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
                *self.extra_args]
        logf = open(self.log_path, "ab")
        try:
            logf.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**clean_env(), **self.env}, preexec_fn=_die_with_parent)
        finally:
            logf.close()
        return None if wait is None else self.wait_healthy(wait)

    def launch(self):
        """Starts the process without waiting for it to answer."""
        self.start(wait=None)

    def wait_healthy(self, wait):
        """Seconds until /healthcheck answered 200; raises if it never did."""
        start = time.monotonic()
        deadline = start + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before answering; log:\n"
                                   + self.log_tail())
            try:
                if self.api.healthcheck(timeout=2).status == 200:
                    return time.monotonic() - start
            except (OSError, http.client.HTTPException, NotSent):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer /healthcheck 200 within {wait} s; log:\n" + self.log_tail())

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout=20.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"warning: server pid {self.proc.pid} ignored SIGTERM for {timeout} s; killing it")
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no log)"


def files_under(path):
    """Regular files below path (recursively); [] if it does not exist."""
    found = []
    for root, _dirs, files in os.walk(path):
        found += [os.path.join(root, f) for f in files]
    return found


def binary_arg(argv_parser):
    """Validates the BINARY argument of a parsed argparse namespace."""
    binary = os.path.realpath(argv_parser.binary)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"error: {argv_parser.binary} is not an executable file", file=sys.stderr)
        sys.exit(2)
    return binary
