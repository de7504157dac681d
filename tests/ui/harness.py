"""Helpers for the browser tests of the web UI (ui_flows.py, run by run.sh).

The pieces, each usable on its own:

- Server: starts the ocellus binary on a free loopback port with its own data
  directory and log file, waits until it answers /versions, and stops it
  however the test script ends (a context manager, atexit, SIGTERM, and the
  kernel's parent-death signal if the script is killed outright).
- make_key: creates an API key with `ocellus key create` in a data directory,
  before a server is started on it; returns the whole key string "ock-...".
- browser: launches Debian's Chromium (/usr/bin/chromium) headless through
  Playwright; Playwright's own browser downloads are never used.
- Watch: records a page's console messages, uncaught script errors and
  Content-Security-Policy violations (both Chromium's "Refused to ..."
  console messages and the `securitypolicyviolation` DOM events).
- axe_violations: runs axe-core in a page whatever its CSP is and returns the
  WCAG 2.1 A/AA violations it finds.
- serve_page / second_origin_server: a one-page web server in a thread, on
  another loopback address (127.0.0.2) for a second origin, optionally with
  response headers such as a CSP.
- Runner, StepFailed, expect, expect_eq: the step runner of the client tests
  (tests/clients/common.py): each step prints "ok: <step>" or "FAIL: <step>"
  with its evidence, and Runner.summary() prints "N passed, M failed" and
  returns the exit status.

How CSP and Playwright meet, checked with Chromium 156 and Playwright 1.65
(self_test_page below is the page that shows it):

- page.evaluate and add_init_script run through the DevTools protocol and
  are not subject to the page's CSP: a page served with
  `script-src 'self'` still lets them run code, so axe-core is evaluated as
  source with page.evaluate. page.add_script_tag, by contrast, inserts a
  <script> element and is refused by such a CSP, as an attacker's would be.
- eval() and new Function inside page.evaluate work too, even where the
  CSP has no 'unsafe-eval' (DevTools evaluations are exempt), so a test
  cannot use page.evaluate to show that the page forbids eval; only the
  page's own scripts are held to its CSP.
- Chromium reports a blocked script, style, image, form action or frame in
  the page's console as an error, which Playwright passes on as a console
  message: older Chromiums say "Refused to ... because it violates the
  following Content Security Policy directive: ...", Chromium 156 says
  "Executing inline script violates the following Content Security Policy
  directive ..."; both mention "Content Security Policy", which is what
  Watch.csp_violations looks for. It also fires a `securitypolicyviolation`
  event at the document, which an init script's listener hears (for an
  inline script: directive script-src-elem, blocked "inline").
- Headless Chromium asks every origin for /favicon.ico, and a 404 there
  is logged as a console error "Failed to load resource: ... 404";
  Watch.problems() leaves that one out.
"""

import atexit
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "clients"))

from common import Runner, StepFailed, expect, expect_eq, indent  # noqa: E402

__all__ = [
    "CHROMIUM",
    "Runner",
    "Server",
    "StepFailed",
    "Watch",
    "axe_violations",
    "browser",
    "expect",
    "expect_eq",
    "free_port",
    "indent",
    "make_key",
    "second_origin_server",
    "self_test_page",
    "serve_page",
]

CHROMIUM = "/usr/bin/chromium"

# How long a server gets to answer /versions after it is started, and to
# exit after SIGTERM before it is killed.
START_TIMEOUT = 15
STOP_TIMEOUT = 10


def free_port(host="127.0.0.1"):
    """A port that was free on host a moment ago.

    Binding port 0 lets the kernel pick one; it is released right away for
    the server to take, which is racy only against other processes grabbing
    ports in the same instant (as in tests/clients/run.sh).
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_env():
    """The environment for the binary: this one without OCELLUS_* settings.

    The server and `ocellus key` read their settings from OCELLUS_*
    variables too, so a developer's shell could otherwise switch a run to
    another mode, data directory or server; OCELLUS_LOG is kept on purpose
    to allow more verbose server logs.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("OCELLUS_") or k == "OCELLUS_LOG"}


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when the test script dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort; atexit still stops the server.
        pass


# Servers not yet stopped, stopped at exit however the script ends. SIGTERM
# (as from a CI timeout) is turned into SystemExit so atexit runs; SIGINT
# already raises KeyboardInterrupt.
_live = set()


def _stop_all():
    for server in list(_live):
        server.stop()


atexit.register(_stop_all)
if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class Server:
    """An ocellus server on a free loopback port, started on construction.

        with Server(binary, auth="none") as server:
            page.goto(server.url + "/ui/")

    It runs `BINARY serve --listen 127.0.0.1:PORT --data-dir DIR --auth AUTH
    [extra_args...]`. data_dir defaults to a fresh temporary directory, which
    stop() removes; a given one (e.g. holding keys from make_key) is kept.
    The log (stdout and stderr) goes to log_path, by default DIR/../server.log
    next to a temporary data directory or DATA_DIR.log beside a given one;
    log_text() reads it, for a failing step's evidence. The constructor
    returns once the server answers /versions, or raises RuntimeError with
    the log.

    Attributes: url ("http://127.0.0.1:PORT", no trailing slash), port,
    host, data_dir (a Path), log_path, process.
    """

    def __init__(self, binary, data_dir=None, auth="none", extra_args=(), log_path=None, host="127.0.0.1"):
        self.binary = str(binary)
        self.host = host
        self._scratch = None
        if data_dir is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="ocellus-ui-"))
            data_dir = self._scratch / "data"
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if log_path is None:
            log_path = (self._scratch / "server.log") if self._scratch else self.data_dir.with_name(self.data_dir.name + ".log")
        self.log_path = Path(log_path)
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        argv = [self.binary, "serve", "--listen", f"{host}:{self.port}", "--data-dir", str(self.data_dir)]
        if auth is not None:
            argv += ["--auth", auth]
        argv += [str(a) for a in extra_args]
        self.argv = argv
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            preexec_fn=_die_with_parent,
        )
        _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with status {self.process.returncode} before answering /versions\n"
                    f"command: {' '.join(self.argv)}\nlog:\n{indent(self.log_text())}"
                )
            try:
                with urllib.request.urlopen(self.url + "/versions", timeout=2) as response:
                    response.read()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(
            f"server did not answer {self.url}/versions within {START_TIMEOUT} s\n"
            f"command: {' '.join(self.argv)}\nlog:\n{indent(self.log_text())}"
        )

    def log_text(self):
        """The server's log so far (empty if there is none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """Stops the server (SIGTERM, then SIGKILL after STOP_TIMEOUT s); idempotent.

        A temporary data directory is removed with its log; a given one is
        left as it is.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _live.discard(self)
        if not self._log.closed:
            self._log.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def make_key(binary, data_dir, name, project, role):
    """Creates an API key in data_dir and returns the whole key, "ock-<id>-<secret>".

    Meant for before a server is started on data_dir: `ocellus key create`
    then opens the database itself. (With a server running on it, the CLI
    would go through that server's admin endpoint instead, found through
    --listen, which would need the bootstrap admin key.) role is admin,
    member or reader; project is a name, created on first use.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary), "key", "create",
        "--data-dir", str(data_dir),
        "--project", project,
        "--role", role,
        "--name", name,
        "--json",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=server_env(), timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {done.returncode}\n"
            f"stdout:\n{indent(done.stdout)}\nstderr:\n{indent(done.stderr)}"
        )
    key = json.loads(done.stdout)["key"]
    if not key.startswith("ock-"):
        raise RuntimeError(f"unexpected key format from {' '.join(argv)}: {done.stdout!r}")
    return key


def browser(playwright, **options):
    """Launches Debian's Chromium headless; further options go to launch().

    --no-sandbox because the tests run as root in CI, where Chromium's
    sandbox refuses to start.
    """
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True, **options)


_binding_names = itertools.count()


class Watch:
    """Records what a page reports: console messages, script errors, CSP violations.

    Create it right after new_page() and before the first goto(), as the
    DOM-event listener is installed with add_init_script, which only acts on
    documents loaded after it:

        page = context.new_page()
        watch = Watch(page)
        page.goto(url)
        expect(not watch.problems(), "\\n".join(watch.problems()))

    Attributes, in the order they happened:
      console      (type, text, url) of every console message, Chromium's
                   own (blocked loads, CSP refusals) included
      page_errors  text of every uncaught exception in the page
      csp_events   dicts from the `securitypolicyviolation` events (directive,
                   blocked, source, line, sample, document)
    """

    def __init__(self, page):
        self.page = page
        self.console = []
        self.page_errors = []
        self.csp_events = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        # A binding (DevTools Runtime.addBinding) and an init script
        # (Page.addScriptToEvaluateOnNewDocument) are both outside the
        # page's CSP, so the listener works on pages that allow no script.
        binding = f"__ocellusCspViolation{next(_binding_names)}"
        page.expose_function(binding, self._on_csp_event)
        page.add_init_script(
            """
            document.addEventListener('securitypolicyviolation', (e) => {
              window[%s]({
                directive: e.effectiveDirective || e.violatedDirective,
                blocked: e.blockedURI,
                source: e.sourceFile,
                line: e.lineNumber,
                sample: e.sample,
                document: e.documentURI,
              });
            }, true);
            """
            % json.dumps(binding)
        )

    def _on_console(self, message):
        location = message.location or {}
        self.console.append((message.type, message.text, location.get("url", "")))

    def _on_page_error(self, error):
        self.page_errors.append(str(error))

    def _on_csp_event(self, event):
        self.csp_events.append(event)

    def csp_violations(self):
        """The console messages that mention Content Security Policy (Chromium's refusals)."""
        return [text for _, text, _ in self.console if "Content Security Policy" in text]

    def errors(self):
        """Console messages of type error (CSP refusals, failed loads, console.error)."""
        return [text for kind, text, _ in self.console if kind == "error"]

    def wait_for_csp_events(self, count=1, timeout=2.0):
        """Waits until at least count DOM violation events arrived; returns them.

        The events reach Python asynchronously, after the page has fired
        them, so a check right after a load may come too early.
        """
        deadline = time.monotonic() + timeout
        while len(self.csp_events) < count and time.monotonic() < deadline:
            self.page.wait_for_timeout(50)
        return list(self.csp_events)

    def problems(self):
        """Everything that should not happen on a correct page, as text lines.

        Console errors (which include the CSP refusals), uncaught exceptions
        and the CSP events; empty when the page was clean. A failed load of
        /favicon.ico, which the browser asks for on its own, is left out.
        """
        lines = [
            f"console error: {text}"
            for kind, text, url in self.console
            if kind == "error" and not (url.endswith("/favicon.ico") and text.startswith("Failed to load resource"))
        ]
        lines += [f"page error: {text}" for text in self.page_errors]
        lines += [f"CSP violation event: {json.dumps(e, sort_keys=True)}" for e in self.csp_events]
        return lines

    def clear(self):
        """Forgets what was recorded so far, e.g. between two steps on one page."""
        self.console.clear()
        self.page_errors.clear()
        self.csp_events.clear()


def axe_source():
    """The text of axe.min.js: $AXE_JS (set by run.sh), else run.sh's default place."""
    path = os.environ.get("AXE_JS") or str(ROOT / "target/ui-node/node_modules/axe-core/axe.min.js")
    try:
        return Path(path).read_text()
    except OSError as e:
        raise RuntimeError(f"cannot read axe-core from {path} ({e}); run tests/ui/run.sh, which installs it") from e


AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_violations(page, tags=AXE_TAGS, selector=None):
    """Runs axe-core on the page's current document; returns its violations.

    axe is evaluated as source through page.evaluate, not inserted as a
    <script> element, so it runs on pages whose CSP allows only their own
    scripts (and records no CSP violation of its own). selector limits the
    check to the elements it matches (default: the whole document). Each
    violation is a dict: id, impact, help, helpUrl, and nodes, a list of
    {target: [CSS selectors], html, summary}.
    """
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    result = page.evaluate(
        """async ([tags, selector]) => {
          const r = await axe.run(selector === null ? document : selector,
                                  {runOnly: {type: 'tag', values: tags}});
          return r.violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
            nodes: v.nodes.map(n => ({target: n.target, html: n.html, summary: n.failureSummary})),
          }));
        }""",
        [list(tags), selector],
    )
    return result


def format_violations(violations):
    """axe violations as readable lines, for a failing step's message."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} - {v['helpUrl']}")
        for node in v["nodes"]:
            lines.append(f"    at {' '.join(map(str, node['target']))}: {node['html'][:200]}")
    return "\n".join(lines)


class _PageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_page(html, host="127.0.0.1", headers=None, files=None):
    """Serves one HTML page at "/" from host on a free port, in a daemon thread.

    headers are extra response headers of the page (e.g. a
    Content-Security-Policy); files maps other paths to (content type, bytes).
    Any other path is 404. Returns (url, stop): the page's URL and a
    function that stops the server (it also dies with the script).
    POSTs are answered like GETs, so a form may target the page itself.
    """
    body = html.encode() if isinstance(html, str) else html
    headers = dict(headers or {})
    files = dict(files or {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                content_type, content, extra = "text/html; charset=utf-8", body, headers
            elif path in files:
                content_type, content = files[path]
                extra = {}
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Cache-Control", "no-store")
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._answer()

        do_HEAD = do_GET

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self._answer()

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

    server = _PageServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    port = server.server_address[1]
    return f"http://{host}:{port}/", stop


def second_origin_server(html, headers=None):
    """Serves html from 127.0.0.2 on a free port: a second origin, for cross-origin tests.

    127.0.0.2 is loopback like 127.0.0.1 but a different origin (and not
    "localhost"), so a page there posting a form or a fetch to the UI at
    127.0.0.1 is a cross-site request the UI must refuse. Returns the
    page's URL ("http://127.0.0.2:PORT/"); the server lives until the
    script exits.
    """
    url, _stop = serve_page(html, host="127.0.0.2", headers=headers)
    return url


# The CSP the UI pages are meant to send; self_test_page serves it.
STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

def _pixel_png():
    """A 1x1 transparent PNG."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 5)) + chunk(b"IEND", b"")


SELF_TEST_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ocellus harness self-test</title></head>
<body>
<main>
<h1>Harness self-test</h1>
<p>The image below has no alt text (an axe violation, image-alt), and the
inline script after it is refused by the page's CSP.</p>
<img src="/pixel.png" width="10" height="10">
<script>document.title = "inline script ran";</script>
</main>
</body>
</html>
"""


def self_test_page():
    """Serves a page with STRICT_CSP, an <img> without alt and an inline script.

    A correct harness sees axe report image-alt on it, Chromium refuse the
    inline script in the console (Watch.csp_violations), a
    securitypolicyviolation event for script-src-elem (Watch.csp_events),
    and the title unchanged. Returns (url, stop) like serve_page.
    """
    return serve_page(
        SELF_TEST_HTML,
        headers={"Content-Security-Policy": STRICT_CSP},
        files={"/pixel.png": ("image/png", _pixel_png())},
    )
