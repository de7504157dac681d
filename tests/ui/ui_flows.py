#!/usr/bin/env python3
"""Browser tests of the ocellus web UI, in Debian's Chromium through Playwright.

Each flow starts the servers it needs (harness.Server, on free loopback
ports, stopped however the script ends) and runs its steps through the
Runner of the client tests: every step prints "ok: <step>", "FAIL: <step>"
(with the evidence) or "skip: <step>" when a step it depends on failed; the
last line is "N passed, M failed" and the exit status is 0 only when nothing
failed or was skipped.

Usage: ui_flows.py PATH_TO_OCELLUS_BINARY   (run.sh sets up the venv, axe-core
                                             and AXE_JS, then runs this)

To add a flow: write a function taking (r, ctx), which runs its steps with
r.step(name, fn, *needs), and append it to FLOWS. ctx.binary is the binary,
ctx.browser the launched Chromium; ctx.new_page() gives a fresh page in its
own browser context (no cookies shared) with a harness.Watch on it.
"""

import json
import sys
import traceback
import urllib.error
import urllib.request
from pathlib import Path

from harness import (
    STRICT_CSP,
    Runner,
    Server,
    StepFailed,
    Watch,
    axe_violations,
    browser,
    expect,
    expect_eq,
    format_violations,
    indent,
    make_key,
    second_origin_server,
    self_test_page,
    serve_page,
)
from playwright.sync_api import sync_playwright

# Playwright's default is 30 s per action; a local server answers at once,
# so a shorter limit makes a hung page fail its step sooner.
ACTION_TIMEOUT_MS = 10_000


class Ctx:
    """What the flows share: the binary and the browser."""

    def __init__(self, binary, chromium):
        self.binary = binary
        self.browser = chromium
        self._contexts = []

    def new_page(self, **context_options):
        """A page in a fresh browser context (its own cookies), with a Watch on it.

        Returns (page, watch). The contexts are closed at the end of the run.
        """
        context = self.browser.new_context(**context_options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        self._contexts.append(context)
        page = context.new_page()
        return page, Watch(page)

    def close(self):
        for context in self._contexts:
            context.close()
        self._contexts.clear()


def http_status(url, headers=None):
    """The status of a GET of url outside the browser (no cookies)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


# ---- The harness checks itself: CSP, axe and the DOM events on a known page ----


def harness_self_test(r, ctx):
    """A page with STRICT_CSP, an <img> without alt and an inline script.

    Shows that axe runs under the UI's CSP and finds a real violation, and
    that CSP refusals are seen both in the console and as DOM events; if one
    of these failed, a clean UI page would prove nothing.
    """
    url, stop = self_test_page()
    page, watch = ctx.new_page()

    def load():
        response = page.goto(url)
        expect_eq(response.status, 200, "status of the self-test page")
        expect_eq(response.headers.get("content-security-policy"), STRICT_CSP, "its CSP header")
        return True

    loaded = r.step("self-test: the page with a strict CSP loads", load)

    def inline_script_blocked():
        expect_eq(page.title(), "ocellus harness self-test", "title (the inline script would change it)")
        events = watch.wait_for_csp_events(1)
        violations = watch.csp_violations()
        expect(violations, f"no CSP refusal in the console; console: {watch.console}")
        expect(
            any(e["directive"] == "script-src-elem" and e["blocked"] == "inline" for e in events),
            f"no securitypolicyviolation event for the inline script; events: {events}",
        )
        print(f"info: Chromium says: {violations[0][:110]}...", flush=True)

    r.step("self-test: the inline script is refused, in the console and as a DOM event", inline_script_blocked, loaded)

    def axe_finds_missing_alt():
        before = len(watch.csp_violations())
        violations = axe_violations(page)
        ids = [v["id"] for v in violations]
        expect("image-alt" in ids, f"axe did not report image-alt; it reported:\n{format_violations(violations)}")
        image_alt = next(v for v in violations if v["id"] == "image-alt")
        expect_eq(image_alt["nodes"][0]["target"], ["img"], "the node axe blames")
        expect_eq(len(watch.csp_violations()), before, "CSP refusals caused by running axe")

    r.step("self-test: axe runs under the CSP and reports the <img> without alt", axe_finds_missing_alt, loaded)

    def script_tag_refused():
        try:
            page.add_script_tag(content="window.__injected = true")
        except Exception as e:  # noqa: BLE001 - Playwright raises its own Error
            expect("Content Security Policy" in str(e), f"add_script_tag failed for another reason: {e}")
        else:
            raise StepFailed("a <script> tag was inserted despite script-src 'self'")
        expect(page.evaluate("window.__injected") is None, "the injected script ran")

    r.step("self-test: an injected <script> tag is refused by the CSP", script_tag_refused, loaded)
    stop()


# ---- Helpers for the UI flows ----

import hashlib
import os
import re
import tempfile
import time

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SCREENSHOT = Path(__file__).resolve().parent.parent.parent / "docs" / "ui-images.png"


def api(server, key, method, path, body=None, headers=None):
    """One API request outside the browser; returns (status, parsed JSON or None)."""
    data = None
    all_headers = dict(headers or {})
    if key:
        all_headers["X-Auth-Token"] = key
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, None


def api_ids(server, key, query):
    """Every image id `GET /v2/images?query` lists, following `next`."""
    ids = []
    path = "/v2/images?" + query
    while path:
        status, body = api(server, key, "GET", path)
        expect_eq(status, 200, f"GET {path}")
        ids += [image["id"] for image in body["images"]]
        path = body.get("next")
    return ids


def row_ids(page):
    """The image ids of the list page's rows, in order."""
    return page.locator("#images tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")


def md5_file(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(directory, name, size):
    path = Path(directory) / name
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = min(left, 8 << 20)
            f.write(os.urandom(chunk))
            left -= chunk
    return path


def blob_count(server):
    blobs = server.data_dir / "blobs"
    return sum(1 for p in blobs.rglob("*") if p.is_file() and p.suffix != ".obao") if blobs.exists() else 0


def temp_count(server):
    tmp = server.data_dir / "tmp"
    return sum(1 for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else 0


def clean_page(page, watch, what):
    """axe finds no WCAG 2 A/AA violation, and nothing since the last check was a CSP
    violation or a script error. (Error statuses the tests cause on purpose, such as a 401
    for a wrong key, are logged by Chromium as failed loads; those are not problems.)"""
    violations = axe_violations(page)
    expect(not violations, f"axe on {what}:\n{format_violations(violations)}")
    problems = [line for line in watch.problems() if "Failed to load resource" not in line]
    watch.clear()
    expect(not problems, f"{what}: " + "\n".join(problems))


def wait_until(page, expression, timeout=60):
    """Polls a JavaScript expression until it is truthy. (Playwright's wait_for_function
    compiles its expression with eval in the page, which the UI's CSP forbids.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(f"() => Boolean({expression})"):
            return
        time.sleep(0.05)
    raise StepFailed(f"{expression} did not become true within {timeout} s")


def login(page, server, key):
    page.goto(server.url + "/ui/")
    expect("/ui/login" in page.url, f"not sent to the login page: {page.url}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/ui/(\?.*)?$"))


_progress_bindings = iter(range(1_000_000))


def watch_progress(page):
    """Returns a list that receives every value the upload's <progress> takes (through a
    binding, so it outlives the page's navigation at the end of the upload)."""
    seen = []
    name = f"__ocellusProgress{next(_progress_bindings)}"
    page.expose_function(name, lambda value: seen.append(value))
    page.evaluate(
        """(name) => {
          const bar = document.querySelector('#progress');
          new MutationObserver(() => window[name](bar.value))
            .observe(bar, {attributes: true, attributeFilter: ['value']});
        }""",
        name,
    )
    return seen


# ---- Keys mode: everything a user does, in Chromium, checked against the API ----


def keys_flow(r, ctx):
    scratch = Path(tempfile.mkdtemp(prefix="ocellus-ui-keys-"))
    data_dir = scratch / "data"
    keys = {}

    def provision():
        keys["admin"] = make_key(ctx.binary, data_dir, "ui-admin", "admin", "admin")
        keys["alice"] = make_key(ctx.binary, data_dir, "alice", "alpha", "member")
        keys["bob"] = make_key(ctx.binary, data_dir, "bob", "beta", "member")
        keys["eve"] = make_key(ctx.binary, data_dir, "eve", "gamma", "member")
        return True

    made = r.step("keys: `ocellus key create` makes the accounts", provision)
    server = r.step(
        "keys: the server starts with --auth keys",
        lambda: Server(ctx.binary, data_dir=data_dir, auth="keys", extra_args=["--auth-failure-limit", "0"]),
        made,
    )
    if server is None:
        return
    alice, watch = ctx.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    state = {}

    def login_page_refuses_a_wrong_key():
        alice.goto(server.url + "/ui/images/new")
        expect("/ui/login" in alice.url, f"no redirect to the login page: {alice.url}")
        clean_page(alice, watch, "the login page")
        alice.get_by_label("API key").fill(keys["alice"][:-4] + "0000")
        with alice.expect_response(lambda response: response.request.method == "POST") as answer:
            alice.get_by_role("button", name="Log in").click()
        expect_eq(answer.value.status, 401, "status of a wrong key")
        expect("not valid" in alice.locator("#form-error").inner_text(), "the refusal's message")

    r.step("login: a wrong key gets 401 and a clear message", login_page_refuses_a_wrong_key)

    def good_login():
        alice.get_by_label("API key").fill(keys["alice"])
        alice.get_by_role("button", name="Log in").click()
        alice.wait_for_url(re.compile(r".*/ui/images/new$"))
        cookies = {c["name"]: c for c in alice.context.cookies()}
        cookie = cookies.get("ocellus_session")
        expect(cookie is not None, f"no session cookie: {cookies}")
        expect_eq((cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]),
                  (True, "Strict", "/ui", False), "cookie flags (HttpOnly, SameSite, Path, Secure)")
        expect(keys["alice"] not in json.dumps(cookies), "the key itself is in a cookie")
        return True

    logged_in = r.step("login: the right key opens a session (HttpOnly, SameSite=Strict, Path=/ui)", good_login)

    def make_catalog():
        formats = ["qcow2", "raw", "iso", "vmdk"]
        for n in range(60):
            body = {
                "name": f"img-{n:02d}",
                "disk_format": formats[n % 4],
                "container_format": "bare",
                "visibility": ["private", "shared", "community"][n % 3],
                "protected": n % 10 == 0,
                "tags": ["even"] if n % 2 == 0 else ["odd"],
            }
            status, _ = api(server, keys["alice"], "POST", "/v2/images", body)
            expect_eq(status, 201, f"create img-{n:02d}")
        status, _ = api(server, keys["admin"], "POST", "/v2/images",
                        {"name": "public-one", "visibility": "public", "disk_format": "raw", "container_format": "bare"})
        expect_eq(status, 201, "admin's public image")
        return True

    catalog = r.step("list: 60 images made through the API", make_catalog, logged_in)

    def paging():
        alice.goto(server.url + "/ui/?limit=25")
        everything = api_ids(server, keys["alice"], "limit=25")
        seen, pages = [], []
        while True:
            ids = row_ids(alice)
            pages.append(ids)
            seen += ids
            next_link = alice.get_by_role("link", name="Next page")
            if next_link.count() == 0:
                break
            next_link.click()
            alice.wait_for_load_state()
        expect_eq(seen, everything, "the pages, in order, against the API's listing")
        expect_eq([len(p) for p in pages], [25, 25, 11], "page sizes")
        alice.get_by_role("link", name="Previous page").click()
        expect_eq(row_ids(alice), pages[1], "the previous page")
        alice.get_by_role("link", name="Previous page").click()
        expect_eq(row_ids(alice), pages[0], "the first page again")
        expect(alice.get_by_role("link", name="Previous page").count() == 0, "a previous link on the first page")
        clean_page(alice, watch, "the list")

    r.step("list: next and previous walk 61 images, each once, as the API lists them", paging, catalog)

    def filters():
        cases = [
            ("name", "f-name", "img-07", "fill"),
            ("status", "f-status", "queued", "select"),
            ("visibility", "f-visibility", "community", "select"),
            ("disk_format", "f-disk-format", "iso", "select"),
            ("tag", "f-tag", "odd", "fill"),
            ("protected", "f-protected", "true", "select"),
            ("member_status", "f-member-status", "all", "select"),
        ]
        for key, field, value, how in cases:
            alice.goto(server.url + "/ui/?limit=1000")
            control = alice.locator(f"#{field}")
            if how == "fill":
                control.fill(value)
            else:
                control.select_option(value)
            alice.get_by_role("button", name="Filter").click()
            alice.wait_for_load_state()
            expected = api_ids(server, keys["alice"], f"limit=1000&{key}={value}")
            expect(expected, f"the API lists nothing for {key}={value}")
            expect_eq(row_ids(alice), expected, f"rows for {key}={value}")
        # Two at once.
        alice.goto(server.url + "/ui/?limit=1000&tag=even&disk_format=qcow2")
        expect_eq(row_ids(alice), api_ids(server, keys["alice"], "limit=1000&tag=even&disk_format=qcow2"), "two filters")
        # A bad value gets the API's error on the page, not a crash.
        alice.goto(server.url + "/ui/?limit=abc")
        expect(alice.locator("#form-error").count() == 1, "no error shown for limit=abc")

    r.step("list: each filter shows what GET /v2/images returns for it", filters, catalog)

    work = scratch / "files"
    work.mkdir()

    def upload_200_mib():
        path = random_file(work, "big-image.raw", 200 << 20)
        alice.goto(server.url + "/ui/images/new")
        clean_page(alice, watch, "the create page")
        alice.locator("#file").set_input_files(str(path))
        expect_eq(alice.locator("#name").input_value(), "big-image", "name guessed from the file")
        expect_eq(alice.locator("#disk_format").input_value(), "raw", "disk format guessed from the file")
        seen = watch_progress(alice)
        alice.get_by_role("button", name="Create image").click()
        alice.wait_for_url(re.compile(rf".*/ui/images/{UUID}\?notice=uploaded"), timeout=120_000)
        image_id = re.search(UUID, alice.url).group(0)
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect_eq((image["status"], image["size"]), ("active", 200 << 20), "status and size")
        expect_eq(image["checksum"], md5_file(path), "md5 of the upload")
        state["big"] = (image_id, path)
        return seen

    seen = r.step("upload: 200 MiB through the create page", upload_200_mib, logged_in)

    def progress_values():
        # The page navigated away at the end; the values were read before.
        expect(len(set(seen)) >= 3, f"fewer than 3 distinct progress values: {seen}")
        expect_eq(max(seen), 100, "last progress value")
        print(f"info: progress values seen: {len(set(seen))} distinct, e.g. {sorted(set(seen))[:8]}", flush=True)

    r.step("upload: the progress bar moved through at least 3 values and ended at 100", progress_values, seen)

    def details_and_download():
        image_id, path = state["big"]
        alice.goto(server.url + f"/ui/images/{image_id}")
        clean_page(alice, watch, "the details page")
        fields = alice.locator("#fields").inner_text()
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        for value in (image["checksum"], image["os_hash_value"], image_id):
            expect(value in fields, f"{value} not on the details page")
        expect(alice.locator("pre.command").count() >= 3, "no commands")
        expect(keys["alice"].split("-")[2] not in alice.content(), "the key's secret is on the page")
        with alice.expect_download() as download:
            alice.get_by_role("link", name="Download").click()
        saved = work / "downloaded"
        download.value.save_as(saved)
        expect_eq(md5_file(saved), md5_file(path), "md5 of the download")

    r.step("details: fields, commands, and the download equals the upload", details_and_download, seen)

    def cancel():
        path = work / "sparse-2g.raw"
        with open(path, "wb") as f:
            f.truncate(2 << 30)
        blobs, = (blob_count(server),)
        alice.goto(server.url + "/ui/images/new")
        alice.locator("#file").set_input_files(str(path))
        alice.locator("#name").fill("cancelled-upload")
        alice.get_by_role("button", name="Create image").click()
        wait_until(alice, "document.querySelector('#progress').value > 0")
        alice.get_by_role("button", name="Cancel upload").click()
        wait_until(alice, "document.querySelector('#progress-text').textContent.includes('cancelled')")
        status, body = api(server, keys["alice"], "GET", "/v2/images?name=cancelled-upload")
        expect_eq(len(body["images"]), 1, "images named cancelled-upload")
        image = body["images"][0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, image = api(server, keys["alice"], "GET", f"/v2/images/{image['id']}")
            if image["status"] == "queued" and temp_count(server) == 0:
                break
            time.sleep(0.2)
        expect_eq((image["status"], image.get("size")), ("queued", None), "the cancelled image")
        expect_eq(blob_count(server), blobs, "blobs after the cancelled upload")
        expect_eq(temp_count(server), 0, "temp files left")

    r.step("upload: Cancel leaves the image queued, no blob and no temp file", cancel, logged_in)

    def refused_format():
        path = random_file(work, "not-really.qcow2", 1 << 20)
        alice.goto(server.url + "/ui/images/new")
        alice.locator("#file").set_input_files(str(path))
        expect_eq(alice.locator("#disk_format").input_value(), "qcow2", "guessed format")
        alice.get_by_role("button", name="Create image").click()
        error = alice.locator("#upload-error")
        error.wait_for(state="visible", timeout=30_000)
        text = error.inner_text()
        expect("qcow2" in text.lower(), f"the API's 415 message is not shown: {text!r}")
        expect(alice.get_by_role("button", name="Retry upload").is_visible(), "no Retry button")
        clean_page(alice, watch, "the create page with an upload error")
        status, body = api(server, keys["alice"], "GET", "/v2/images?name=not-really")
        expect_eq(body["images"][0]["status"], "queued", "the refused image's status")

    r.step("upload: raw bytes declared qcow2 show the API's 415 message and Retry", refused_format, logged_in)

    def keyboard_create_and_upload():
        path = random_file(work, "keyboard.raw", 3 << 20)
        alice.goto(server.url + "/ui/images/new")
        for _ in range(60):
            alice.keyboard.press("Tab")
            if alice.evaluate("document.activeElement && document.activeElement.id") == "file":
                break
        else:
            raise StepFailed("Tab never reached the file input")
        with alice.expect_file_chooser() as chooser:
            alice.keyboard.press("Space")
        chooser.value.set_files(str(path))
        alice.keyboard.press("Tab")
        expect_eq(alice.evaluate("document.activeElement.id"), "name", "focus after the file input")
        alice.keyboard.press("Control+A")
        alice.keyboard.type("typed-by-keyboard")
        for _ in range(60):
            alice.keyboard.press("Tab")
            if alice.evaluate("document.activeElement.id") == "create-button":
                break
        else:
            raise StepFailed("Tab never reached the Create button")
        alice.keyboard.press("Enter")
        alice.wait_for_url(re.compile(rf".*/ui/images/{UUID}\?notice=uploaded"), timeout=60_000)
        status, body = api(server, keys["alice"], "GET", "/v2/images?name=typed-by-keyboard")
        image = body["images"][0]
        expect_eq((image["status"], image["disk_format"], image["checksum"]), ("active", "raw", md5_file(path)), "the image")

    r.step("keyboard only: create and upload with Tab, Space and Enter", keyboard_create_and_upload, logged_in)

    def edit_and_read_only():
        image_id, _ = state["big"]
        alice.goto(server.url + f"/ui/images/{image_id}/edit")
        clean_page(alice, watch, "the edit page")
        read_only = alice.locator("#read-only").inner_text()
        for key in ("os_hash_value", "os_hash_algo", "checksum"):
            expect(key in read_only, f"{key} not shown read-only")
        expect(alice.locator("#properties").input_value().find("os_hash") < 0, "os_hash_* are editable")
        alice.locator("#name").fill("<b>renamed</b>")
        alice.locator("#min_disk").fill("3")
        alice.locator("#properties").fill("os_distro=cirros\nnote=<script>alert(1)</script>\n")
        alice.get_by_role("button", name="Save").click()
        alice.wait_for_url(re.compile(r".*notice=saved"))
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect_eq((image["name"], image["min_disk"], image["os_distro"], image["note"]),
                  ("<b>renamed</b>", 3, "cirros", "<script>alert(1)</script>"), "saved values")
        expect_eq(alice.locator("h1").inner_text(), "<b>renamed</b>", "the name renders as text")
        expect(alice.locator("main b").count() == 0, "markup in the name became an element")
        # Invalid input: the form again with the API's message, input kept.
        alice.goto(server.url + f"/ui/images/{image_id}/edit")
        alice.locator("#min_ram").fill("-4")
        alice.get_by_role("button", name="Save").click()
        expect("min_ram" in alice.locator("#form-error").inner_text(), "no message for a negative min_ram")
        expect_eq(alice.locator("#min_ram").input_value(), "-4", "the input kept")
        # A form saved after the image changed elsewhere is refused.
        alice.goto(server.url + f"/ui/images/{image_id}/edit")
        status, _ = api(server, keys["alice"], "PATCH", f"/v2/images/{image_id}",
                        [{"op": "replace", "path": "/name", "value": "changed-elsewhere"}],
                        {"Content-Type": "application/openstack-images-v2.1-json-patch"})
        expect_eq(status, 200, "the PATCH from elsewhere")
        alice.locator("#name").fill("stale-save")
        with alice.expect_response(lambda response: response.request.method == "POST") as answer:
            alice.get_by_role("button", name="Save").click()
        expect_eq(answer.value.status, 409, "status of a stale save")
        expect("changed after this form" in alice.locator("#form-error").inner_text(), "the conflict message")
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect_eq(image["name"], "changed-elsewhere", "name after the refused save")

    r.step("edit: saves one patch, shows computed keys read-only, keeps bad input, refuses a stale form",
           edit_and_read_only, seen)

    def tags():
        image_id, _ = state["big"]
        alice.goto(server.url + f"/ui/images/{image_id}")
        alice.get_by_label("New tag").fill("from-the-ui")
        alice.get_by_role("button", name="Add tag").click()
        alice.wait_for_url(re.compile(r".*notice=tag-added"))
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect("from-the-ui" in image["tags"], f"tags: {image['tags']}")
        alice.get_by_role("button", name="Remove tag from-the-ui").click()
        alice.wait_for_url(re.compile(r".*notice=tag-removed"))
        status, image = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect("from-the-ui" not in image["tags"], f"tags: {image['tags']}")

    r.step("tags: add and remove", tags, seen)

    bob, bob_watch = ctx.new_page()

    def share_and_accept():
        image_id, _ = state["big"]
        login(bob, server, keys["bob"])
        project_line = bob.locator("#project").inner_text()
        bob_project = re.search(r"ID (\S+) ", project_line).group(1)
        alice.goto(server.url + f"/ui/images/{image_id}/edit")
        alice.locator("#visibility").select_option("shared")
        alice.get_by_role("button", name="Save").click()
        alice.wait_for_url(re.compile(r".*notice=(saved|unchanged)"))
        alice.get_by_label("Share with project ID").fill(bob_project)
        alice.get_by_role("button", name="Share", exact=True).click()
        alice.wait_for_url(re.compile(r".*notice=member-added"))
        expect(bob_project in alice.locator("#members").inner_text(), "bob's project not in the members")
        bob.goto(server.url + "/ui/")
        expect(image_id not in row_ids(bob), "a pending share is in bob's default list")
        bob.get_by_role("link", name=re.compile("await your answer")).click()
        expect_eq(row_ids(bob), [image_id], "bob's pending shares")
        clean_page(bob, bob_watch, "the pending shares list")
        bob.goto(server.url + f"/ui/images/{image_id}")
        clean_page(bob, bob_watch, "a shared image's page")
        bob.get_by_role("button", name="Accept").click()
        bob.wait_for_url(re.compile(r".*notice=accepted"))
        expect_eq(bob.locator("#my-share").inner_text(), "accepted", "bob's answer")
        bob.goto(server.url + "/ui/")
        expect(image_id in row_ids(bob), "the accepted image is not in bob's list")
        # Bob may see it but not change it: no Edit, and a forced edit page is 403 with the reason.
        bob.goto(server.url + f"/ui/images/{image_id}/edit")
        expect("not authorized" in bob.locator("#error-message").inner_text(), "bob's edit refusal")

    r.step("share: alice shares with bob's project, bob accepts and sees it", share_and_accept, seen)

    def protected_delete():
        status, body = api(server, keys["alice"], "GET", "/v2/images?name=img-00")
        image_id = body["images"][0]["id"]
        alice.goto(server.url + f"/ui/images/{image_id}")
        alice.get_by_role("link", name="Delete").click()
        clean_page(alice, watch, "the delete confirmation")
        expect("protected" in alice.locator("main").inner_text(), "no protected warning")
        with alice.expect_response(lambda response: response.request.method == "POST") as answer:
            alice.get_by_role("button", name="Delete image").click()
        expect_eq(answer.value.status, 403, "deleting a protected image")
        expect("protected" in alice.locator("#error-message").inner_text(), "the reason")
        clean_page(alice, watch, "an error page")
        status, _ = api(server, keys["alice"], "GET", f"/v2/images/{image_id}")
        expect_eq(status, 200, "the protected image after the refusal")
        # An unprotected one goes.
        status, body = api(server, keys["alice"], "GET", "/v2/images?name=img-01")
        doomed = body["images"][0]["id"]
        alice.goto(server.url + f"/ui/images/{doomed}/delete")
        alice.get_by_role("button", name="Delete image").click()
        alice.wait_for_url(re.compile(r".*notice=deleted"))
        expect_eq(api(server, keys["alice"], "GET", f"/v2/images/{doomed}")[0], 404, "the deleted image")
        # Invisible images are 404.
        alice.goto(server.url + "/ui/images/00000000-0000-4000-8000-000000000000")
        expect("No image found" in alice.locator("#error-message").inner_text(), "unknown image page")

    r.step("delete: a protected image is refused with the reason; another is deleted", protected_delete, catalog)

    def deactivate():
        image_id, _ = state["big"]
        alice.goto(server.url + f"/ui/images/{image_id}")
        alice.get_by_role("button", name="Deactivate").click()
        alice.wait_for_url(re.compile(r".*notice=deactivated"))
        expect_eq(api(server, keys["alice"], "GET", f"/v2/images/{image_id}")[1]["status"], "deactivated", "status")
        alice.get_by_role("button", name="Reactivate").click()
        alice.wait_for_url(re.compile(r".*notice=reactivated"))
        expect_eq(api(server, keys["alice"], "GET", f"/v2/images/{image_id}")[1]["status"], "active", "status")

    r.step("deactivate and reactivate", deactivate, seen)

    def cross_origin():
        count = len(api_ids(server, keys["alice"], "limit=1000"))
        html = (
            "<!doctype html><title>elsewhere</title>"
            f"<form method=post action='{server.url}/ui/images'>"
            "<input name=name value=forged><input name=csrf value=guess>"
            "<button>go</button></form>"
        )
        other_url = second_origin_server(html)
        page = alice.context.new_page()
        page.goto(other_url)
        with page.expect_response(lambda response: "/ui/images" in response.url) as answer:
            page.get_by_role("button", name="go").click()
        expect_eq(answer.value.status, 403, "a form posted from 127.0.0.2")
        expect_eq(len(api_ids(server, keys["alice"], "limit=1000")), count, "images after the forged post")
        page.close()

    r.step("cross-site: a page on 127.0.0.2 posting to /ui is refused, nothing made", cross_origin, logged_in)

    def bad_host():
        status = http_status(server.url + "/ui/login", {"Host": f"rebound.example:{server.port}"})
        expect_eq(status, 403, "a page asked for under another host name")

    r.step("DNS rebinding: a request with a foreign Host gets 403", bad_host)

    def screenshot():
        alice.goto(server.url + "/ui/?limit=12")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        alice.screenshot(path=str(SCREENSHOT), full_page=False)
        expect(SCREENSHOT.stat().st_size > 10_000, "the screenshot is empty")

    r.step("screenshot of the list for the README (docs/ui-images.png)", screenshot, catalog)

    eve, _ = ctx.new_page()

    def revocation():
        login(eve, server, keys["eve"])
        key_id = keys["eve"].split("-")[1]
        status, _ = api(server, keys["admin"], "DELETE", f"/ocellus/v1/keys/{key_id}")
        expect_eq(status, 204, "revoking eve's key")
        eve.goto(server.url + "/ui/")
        expect("/ui/login" in eve.url, f"still logged in after revocation: {eve.url}")

    r.step("revocation: revoking the key logs its browser out at once", revocation)

    nojs, nojs_watch = ctx.new_page(java_script_enabled=False)

    def without_javascript():
        login(nojs, server, keys["alice"])
        expect(len(row_ids(nojs)) > 0, "the list without JavaScript")
        nojs.get_by_label("Name").fill("img-02")
        nojs.get_by_role("button", name="Filter").click()
        nojs.get_by_role("link", name="img-02").click()
        expect(nojs.locator("#fields").count() == 1, "the details page without JavaScript")
        image_id = re.search(UUID, nojs.url).group(0)
        nojs.get_by_role("link", name="Edit").click()
        nojs.locator("#name").fill("edited-without-js")
        nojs.get_by_role("button", name="Save").click()
        nojs.wait_for_url(re.compile(r".*notice=saved"))
        expect_eq(api(server, keys["alice"], "GET", f"/v2/images/{image_id}")[1]["name"], "edited-without-js", "name")
        # A queued image's page shows the upload commands instead of the script's form.
        commands = nojs.locator(".no-js").inner_text()
        expect("curl -fT FILE" in commands and "openstack image create" in commands, f"commands: {commands}")
        expect(keys["alice"].split("-")[2] not in nojs.content(), "the key's secret is on the page")
        nojs.get_by_role("link", name="Delete").click()
        nojs.get_by_role("button", name="Delete image").click()
        nojs.wait_for_url(re.compile(r".*notice=deleted"))
        expect_eq(api(server, keys["alice"], "GET", f"/v2/images/{image_id}")[0], 404, "deleted without JavaScript")

    r.step("without JavaScript: list, details, edit and delete work", without_javascript, catalog)
    server.stop()


def throttle_flow(r, ctx):
    """A wrong key is refused with 401, and after the limit with 429, as the API does."""
    scratch = Path(tempfile.mkdtemp(prefix="ocellus-ui-throttle-"))
    key = make_key(ctx.binary, scratch / "data", "someone", "alpha", "member")
    server = Server(ctx.binary, data_dir=scratch / "data", auth="keys", extra_args=["--auth-failure-limit", "2"])
    page, watch = ctx.new_page()

    def throttled():
        statuses = []
        for _ in range(3):
            page.goto(server.url + "/ui/login")
            page.get_by_label("API key").fill(key[:-4] + "abcd")
            with page.expect_response(lambda response: response.request.method == "POST") as answer:
                page.get_by_role("button", name="Log in").click()
            statuses.append(answer.value.status)
        expect_eq(statuses, [401, 401, 429], "statuses of three wrong keys with a limit of 2")
        expect("Too many" in page.locator("#form-error").inner_text(), "the 429 message")
        clean_page(page, watch, "the login page with an error")

    r.step("login: wrong keys get 401, then 429 past auth_failure_limit", throttled)
    server.stop()


def lab_flow(r, ctx):
    """Lab mode: no login, a banner, and the same pages; a web-download from a URL."""
    payload = os.urandom(3 << 20)
    source, stop_source = serve_page("<!doctype html><title>files</title>", host="127.0.0.2",
                                     files={"/disk.raw": ("application/octet-stream", payload)})
    server = r.step(
        "lab mode: the server starts (--auth none, web-download may reach 127.0.0.2)",
        lambda: Server(ctx.binary, auth="none", extra_args=["--web-download-allow", "127.0.0.2/32"]),
    )
    if server is None:
        return
    page, watch = ctx.new_page()

    def banner_and_create():
        page.goto(server.url + "/ui/")
        expect("Lab mode" in page.locator(".banner").inner_text(), "no lab banner")
        expect(page.get_by_role("button", name="Log out").count() == 0, "a logout button in lab mode")
        clean_page(page, watch, "the lab list")
        page.get_by_role("link", name="New image").click()
        page.locator("#name").fill("lab-image")
        page.locator("#visibility").select_option("public")
        page.get_by_role("button", name="Create image").click()
        page.wait_for_url(re.compile(rf".*/ui/images/{UUID}\?notice=created"))
        expect(page.locator(".no-js").is_hidden(), "the no-script commands show with JavaScript on")
        clean_page(page, watch, "a queued image's page with the upload form")
        status, body = api(server, None, "GET", "/v2/images?name=lab-image")
        expect_eq(body["images"][0]["visibility"], "public", "the lab admin may publicize")

    r.step("lab mode: banner, no login, create", banner_and_create)

    def import_from_url():
        page.goto(server.url + "/ui/images/new")
        page.locator("#name").fill("from-a-url")
        page.locator("#disk_format").select_option("raw")
        page.get_by_label("Or import from a URL (web-download)").fill(source + "disk.raw")
        page.get_by_role("button", name="Create image").click()
        page.wait_for_url(re.compile(rf".*/ui/images/{UUID}\?notice=import-started"))
        image_id = re.search(UUID, page.url).group(0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, image = api(server, None, "GET", f"/v2/images/{image_id}")
            if image["status"] in ("active", "queued") and image["status"] != "importing":
                break
            time.sleep(0.2)
        expect_eq((image["status"], image.get("checksum")), ("active", hashlib.md5(payload).hexdigest()), "the import")
        page.reload()
        expect(page.locator("#tasks").count() == 1, "the import task is not on the image's page")
        expect("success" in page.locator("#tasks").inner_text(), "the task's status")
        clean_page(page, watch, "an imported image's page")

    r.step("lab mode: create from a URL runs web-download; the task shows on the page", import_from_url)
    server.stop()
    stop_source()


def big_upload_flow(r, ctx):
    """OCELLUS_UI_BIG=1: a sparse file over 4 GiB goes through the browser's upload."""
    if os.environ.get("OCELLUS_UI_BIG") != "1":
        print("info: OCELLUS_UI_BIG is not 1: the sparse 4.5 GiB upload is left out", flush=True)
        return
    server = Server(ctx.binary, auth="none")
    page, _ = ctx.new_page()
    scratch = Path(tempfile.mkdtemp(prefix="ocellus-ui-big-"))

    def big():
        path = scratch / "sparse.raw"
        size = (4 << 30) + (512 << 20)
        with open(path, "wb") as f:
            f.seek(1 << 30)
            f.write(os.urandom(1 << 20))
            f.truncate(size)
        page.goto(server.url + "/ui/images/new")
        page.locator("#file").set_input_files(str(path))
        page.get_by_role("button", name="Create image").click()
        page.wait_for_url(re.compile(rf".*/ui/images/{UUID}\?notice=uploaded"), timeout=900_000)
        image_id = re.search(UUID, page.url).group(0)
        status, image = api(server, None, "GET", f"/v2/images/{image_id}")
        expect_eq((image["status"], image["size"], image["checksum"]), ("active", size, md5_file(path)), "the big image")

    r.step("upload: a sparse 4.5 GiB file reaches active with the right size and md5", big)
    server.stop()


FLOWS = [harness_self_test, lab_flow, throttle_flow, keys_flow, big_upload_flow]



def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} PATH_TO_OCELLUS_BINARY", file=sys.stderr)
        return 2
    binary = str(Path(sys.argv[1]).resolve())
    r = Runner()
    with sync_playwright() as playwright:
        chromium = browser(playwright)
        print(f"browser: Chromium {chromium.version}, binary: {binary}", flush=True)
        ctx = Ctx(binary, chromium)
        try:
            for flow in FLOWS:
                # A flow's own code between steps (page setup, a server that
                # will not start) fails the run, not just this flow.
                try:
                    flow(r, ctx)
                except Exception:  # noqa: BLE001 - reported as a failure like a step's
                    r.failed += 1
                    print(f"FAIL: {flow.__name__} stopped outside its steps", flush=True)
                    print(indent(traceback.format_exc()), flush=True)
        finally:
            ctx.close()
            chromium.close()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
