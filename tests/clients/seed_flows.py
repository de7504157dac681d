#!/usr/bin/env python3
"""Client-compatibility smoke test for ocellus.

Runs the seed flows with the real OpenStack clients against a running
ocellus server: python-glanceclient and python-openstackclient as
subprocesses (exactly as an operator would type them) and openstacksdk as a
library; then interoperable image import with each of them (glance-direct,
and web-download when a URL is given). Every step prints "ok: <step>",
"FAIL: <step>" (with the command, its stdout and its stderr) or
"skip: <step>" when a step it depends on has failed. The last line is
"N passed, M failed" (", K skipped" is appended only when something was
skipped, ", K not supported by the client" when a pinned client lacks an
option a step needs) and the exit status is 0 only when nothing failed or
was skipped.

Usage: seed_flows.py URL IMAGE [--web-url WEB_URL]
  URL      the unversioned root of the server, e.g. http://127.0.0.1:9292
  IMAGE    a local disk image file to upload (a qcow2 made by run.sh)
  WEB_URL  the same file on a web server the server may fetch from (run.sh
           serves it on loopback and allows that with --web-download-allow),
           for the web-download imports; without it they are left out

The server is expected to run in unauthenticated lab mode, so any token is
accepted and no Keystone is involved.
"""

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from common import (
    TIMEOUT,
    Runner,
    StepFailed,
    expect,
    expect_eq,
    file_digests,
    find_tool,
    isolated_env,
    parse_json,
    parse_table,
    qcow2_virtual_size,
    run_command,
)


class Env:
    """Everything the flows share: the server URL, the image and its digests."""

    def __init__(self, url, image, workdir):
        self.url = url.rstrip("/")
        self.image = Path(image).resolve()
        self.data = self.image.read_bytes()
        self.size = len(self.data)
        self.md5 = hashlib.md5(self.data).hexdigest()
        self.sha512 = hashlib.sha512(self.data).hexdigest()
        self.virtual_size = qcow2_virtual_size(self.data)
        self.workdir = Path(workdir)
        self.cli_env = isolated_env(self.workdir)

    def tool(self, name):
        return find_tool(name)

    def run(self, argv, check=True, terminal=False):
        """Runs a CLI with the isolated environment and the global timeout."""
        return run_command(argv, self.cli_env, self.workdir, check=check, terminal=terminal)

    def glance(self, *args, check=True, terminal=False):
        # The token is arbitrary because the server runs in lab mode; giving
        # both --os-image-url and --os-auth-token is what makes glanceclient
        # skip Keystone entirely.
        argv = [self.tool("glance"), "--os-image-url", self.url, "--os-auth-token", "x", *args]
        return self.run(argv, check=check, terminal=terminal)

    def openstack(self, *args, check=True, terminal=False):
        # The "none" auth plugin with --os-endpoint is how openstackclient
        # talks to a standalone service; the endpoint is unversioned, like a
        # real Glance catalog entry, so the client has to discover /v2.
        argv = [self.tool("openstack"), "--os-auth-type", "none", "--os-endpoint", self.url, *args]
        return self.run(argv, check=check, terminal=terminal)

    def get_json(self, path):
        """GETs an API path directly (lab mode needs no token), for what no CLI shows."""
        # No proxy, whatever the host's settings: the server is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        try:
            with opener.open(request, timeout=TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            raise StepFailed(f"GET {path}: HTTP {e.code}\n{e.read()[:2000]!r}") from None
        try:
            return json.loads(body)
        except json.JSONDecodeError as e:
            raise StepFailed(f"GET {path}: the body is not JSON ({e})\n{body[:2000]!r}") from None

    def scratch(self, name):
        path = self.workdir / name
        if path.exists():
            path.unlink()
        return path


def expect_same_bytes(env, path, what, cmd=None):
    size, md5, sha512 = file_digests(path)
    expect_eq(size, env.size, f"{what} size", cmd)
    expect_eq(md5, env.md5, f"{what} md5", cmd)
    expect_eq(sha512, env.sha512, f"{what} sha512", cmd)


def glance_tags(table):
    """Reads the tags cell, which glanceclient prints as a JSON list."""
    raw = table.get("tags", "")
    try:
        tags = json.loads(raw)
    except json.JSONDecodeError:
        tags = [t.strip() for t in raw.split(",") if t.strip()]
    return set(tags)


# glanceclient flow.


def glance_flow(r, env):
    name = "cirros-glanceclient"

    def create():
        cmd = env.glance(
            "image-create",
            "--name", name,
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--visibility", "public",
            "--file", str(env.image),
        )
        table = parse_table(cmd.stdout)
        image_id = table.get("id", "")
        expect(re.fullmatch(r"[0-9a-f-]{36}", image_id), "no image id in the image-create table", cmd)
        expect_eq(table.get("name"), name, "name", cmd)
        expect_eq(table.get("status"), "active", "status", cmd)
        # Size and digests are checked by image-show, so that a wrong digest
        # fails one step instead of skipping the whole flow.
        return image_id

    image_id = r.step("glance image-create", create)

    def list_():
        cmd = env.glance("image-list")
        expect(image_id in cmd.stdout, f"image {image_id} missing from image-list", cmd)
        row = next(line for line in cmd.stdout.splitlines() if image_id in line)
        expect(name in row, f"image-list row for {image_id} lacks the name {name}", cmd)

    r.step("glance image-list", list_, image_id)

    def show(check):
        cmd = env.glance("image-show", "--max-column-width", "1000", image_id)
        table = parse_table(cmd.stdout)
        check(table, cmd)

    def check_show(t, cmd):
        expect_eq(t.get("id"), image_id, "id", cmd)
        expect_eq(t.get("name"), name, "name", cmd)
        expect_eq(t.get("status"), "active", "status", cmd)
        expect_eq(t.get("visibility"), "public", "visibility", cmd)
        expect_eq(t.get("disk_format"), "qcow2", "disk_format", cmd)
        expect_eq(t.get("container_format"), "bare", "container_format", cmd)
        expect_eq(t.get("size"), str(env.size), "size", cmd)
        expect_eq(t.get("checksum"), env.md5, "checksum", cmd)
        expect_eq(t.get("os_hash_algo"), "sha512", "os_hash_algo", cmd)
        expect_eq(t.get("os_hash_value"), env.sha512, "os_hash_value", cmd)
        if env.virtual_size is not None:
            expect_eq(t.get("virtual_size"), str(env.virtual_size), "virtual_size", cmd)

    r.step("glance image-show", lambda: show(check_show), image_id)

    def download():
        out = env.scratch("glance-download.img")
        cmd = env.glance("image-download", "--file", str(out), image_id)
        expect(out.exists(), f"image-download did not write {out}", cmd)
        expect_same_bytes(env, out, "downloaded image", cmd)

    r.step("glance image-download", download, image_id)

    def update():
        env.glance("image-update", "--property", "os_distro=cirros", "--min-ram", "64", image_id)

        def check(t, cmd):
            expect_eq(t.get("os_distro"), "cirros", "os_distro", cmd)
            expect_eq(t.get("min_ram"), "64", "min_ram", cmd)
            # An update must not disturb the data or its digests.
            expect_eq(t.get("checksum"), env.md5, "checksum after update", cmd)

        show(check)

    r.step("glance image-update", update, image_id)

    def tag_update():
        env.glance("image-tag-update", image_id, "mytag")

        def check(t, cmd):
            expect("mytag" in glance_tags(t), "tag mytag missing after image-tag-update", cmd)

        show(check)

    tagged = r.step("glance image-tag-update", tag_update, image_id)

    def tag_delete():
        env.glance("image-tag-delete", image_id, "mytag")

        def check(t, cmd):
            expect("mytag" not in glance_tags(t), "tag mytag still present after image-tag-delete", cmd)

        show(check)

    r.step("glance image-tag-delete", tag_delete, image_id, tagged)

    def delete():
        env.glance("image-delete", image_id)
        cmd = env.glance("image-show", image_id, check=False)
        expect(cmd.rc != 0, "image-show still succeeds after image-delete", cmd)
        # The failure must be the server's 404, not e.g. a crashed server.
        text = (cmd.stdout + cmd.stderr).lower()
        expect("404" in text or "not found" in text, "image-show failed, but not with 404 Not Found", cmd)

    r.step("glance image-delete", delete, image_id)


# openstackclient flow.


def osc_field(image, key):
    """Looks a field up at the top level or among the extra properties.

    openstackclient lists the schema's attributes at the top level and folds
    everything else into "properties"; which side a field lands on depends
    on the SDK's Image resource, so the assertion should not.
    """
    if key in image:
        return image[key]
    props = image.get("properties") or {}
    if isinstance(props, str):
        # Older releases render the properties as "k='v', ..." text.
        match = re.search(rf"\b{re.escape(key)}='([^']*)'", props)
        return match.group(1) if match else None
    return props.get(key)


def osc_flow(r, env):
    name = "cirros-openstackclient"

    def create():
        cmd = env.openstack(
            "image", "create", name,
            "--file", str(env.image),
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--public",
            "-f", "json",
        )
        image = parse_json(cmd)
        image_id = image.get("id", "")
        expect(re.fullmatch(r"[0-9a-f-]{36}", image_id or ""), "no image id in image create output", cmd)
        expect_eq(image.get("name"), name, "name", cmd)
        return image_id

    image_id = r.step("openstack image create", create)

    def list_ids():
        cmd = env.openstack("image", "list", "-f", "json")
        rows = parse_json(cmd)
        expect(isinstance(rows, list), "image list output is not a JSON list", cmd)
        return {row.get("ID"): row for row in rows}, cmd

    def list_():
        rows, cmd = list_ids()
        expect(image_id in rows, f"image {image_id} missing from image list", cmd)
        expect_eq(rows[image_id].get("Name"), name, "Name", cmd)
        expect_eq(rows[image_id].get("Status"), "active", "Status", cmd)

    r.step("openstack image list", list_, image_id)

    def show(check):
        cmd = env.openstack("image", "show", image_id, "-f", "json")
        check(parse_json(cmd), cmd)

    def check_show(i, cmd):
        expect_eq(i.get("id"), image_id, "id", cmd)
        expect_eq(i.get("status"), "active", "status", cmd)
        expect_eq(i.get("visibility"), "public", "visibility", cmd)
        expect_eq(i.get("disk_format"), "qcow2", "disk_format", cmd)
        expect_eq(i.get("container_format"), "bare", "container_format", cmd)
        expect_eq(i.get("size"), env.size, "size", cmd)
        expect_eq(i.get("checksum"), env.md5, "checksum", cmd)
        expect_eq(osc_field(i, "os_hash_algo"), "sha512", "os_hash_algo", cmd)
        expect_eq(osc_field(i, "os_hash_value"), env.sha512, "os_hash_value", cmd)
        if env.virtual_size is not None:
            expect_eq(i.get("virtual_size"), env.virtual_size, "virtual_size", cmd)

    r.step("openstack image show", lambda: show(check_show), image_id)

    def save():
        out = env.scratch("osc-save.img")
        cmd = env.openstack("image", "save", "--file", str(out), image_id)
        expect(out.exists(), f"image save did not write {out}", cmd)
        expect_same_bytes(env, out, "saved image", cmd)

    r.step("openstack image save", save, image_id)

    def set_():
        env.openstack("image", "set", "--property", "os_distro=cirros", "--min-disk", "1", image_id)

        def check(i, cmd):
            expect_eq(osc_field(i, "os_distro"), "cirros", "os_distro", cmd)
            expect_eq(i.get("min_disk"), 1, "min_disk", cmd)
            expect_eq(i.get("checksum"), env.md5, "checksum after set", cmd)

        show(check)

    r.step("openstack image set", set_, image_id)

    def delete():
        env.openstack("image", "delete", image_id)
        rows, cmd = list_ids()
        expect(image_id not in rows, f"image {image_id} still in image list after image delete", cmd)

    r.step("openstack image delete", delete, image_id)


# openstacksdk flow.


def sdk_connect(endpoint, **extra):
    import openstack

    # Neither clouds.yaml nor OS_* may change where the SDK goes; the test
    # environment is fully described by these arguments.
    return openstack.connect(
        auth_type="none",
        auth={"endpoint": endpoint},
        image_endpoint_override=endpoint,
        load_yaml_config=False,
        load_envvars=False,
        # The CLIs get a subprocess timeout; the library needs its own so a
        # server that stops answering fails the step instead of hanging.
        api_timeout=TIMEOUT,
        **extra,
    )


def sdk_flow(r, env):
    name = "cirros-openstacksdk"

    def connect():
        # Real Glance catalog entries are unversioned (http://host:9292), and
        # the SDK is expected to find /v2 through version discovery at the
        # root, which answers 300 Multiple Choices with the versions document.
        conn = sdk_connect(env.url)
        endpoint = conn.image.get_endpoint()
        expect(endpoint.rstrip("/").endswith("/v2"), f"discovered image endpoint {endpoint!r} is not the v2 API")
        return conn

    conn = r.step("openstacksdk connect (unversioned endpoint, discovery)", connect)

    def create():
        image = conn.create_image(
            name,
            filename=str(env.image),
            disk_format="qcow2",
            container_format="bare",
            wait=True,
            timeout=TIMEOUT,
            # A leftover image of the same name and checksum would otherwise
            # be returned instead of uploading, hiding an upload failure.
            allow_duplicates=True,
        )
        expect(image is not None, "create_image returned nothing")
        expect_eq(image.status, "active", "status")
        expect_eq(image.name, name, "name")
        return image

    image = r.step("openstacksdk create_image", create, conn)

    def get():
        fresh = conn.image.get_image(image.id)
        expect_eq(fresh.status, "active", "status")
        expect_eq(fresh.disk_format, "qcow2", "disk_format")
        expect_eq(fresh.container_format, "bare", "container_format")
        expect_eq(fresh.size, env.size, "size")
        expect_eq(fresh.checksum, env.md5, "checksum")
        expect_eq(fresh.hash_algo, "sha512", "os_hash_algo")
        expect_eq(fresh.hash_value, env.sha512, "os_hash_value")
        if env.virtual_size is not None:
            expect_eq(fresh.virtual_size, env.virtual_size, "virtual_size")

    r.step("openstacksdk get_image", get, image)

    def list_():
        found = [i for i in conn.image.images() if i.id == image.id]
        expect(len(found) == 1, f"image {image.id} appears {len(found)} times in images()")
        expect_eq(found[0].name, name, "name")

    r.step("openstacksdk images", list_, image)

    def download():
        response = conn.image.download_image(image)
        data = response.content if hasattr(response, "content") else response
        expect_eq(len(data), env.size, "downloaded size")
        expect_eq(hashlib.md5(data).hexdigest(), env.md5, "downloaded md5")
        expect_eq(hashlib.sha512(data).hexdigest(), env.sha512, "downloaded sha512")

    r.step("openstacksdk download_image", download, image)

    def versioned():
        # The override must be the unversioned root, as in a real Glance
        # catalog: given ".../v2", openstacksdk fetches only that URL for
        # discovery (GET /v2, not a documented Glance discovery URL) with the
        # version hack disabled, so it works only if the server happens to
        # answer there. This form is therefore only probed and reported,
        # never counted, lest the test demand more than Glance documents.
        try:
            other = sdk_connect(env.url + "/v2")
            try:
                ids = {i.id for i in other.image.images()}
            finally:
                other.close()
        except Exception as e:  # noqa: BLE001 - the probe only reports.
            print(f"info: openstacksdk with override {env.url}/v2 fails: {type(e).__name__}: {e}", flush=True)
            return
        found = "finds" if image.id in ids else "does not find"
        print(f"info: openstacksdk with override {env.url}/v2 works and {found} the image", flush=True)

    if image is not None:
        versioned()

    def delete():
        conn.image.delete_image(image, ignore_missing=False)
        expect(conn.image.find_image(image.id) is None, f"image {image.id} still found after delete")
        ids = {i.id for i in conn.image.images()}
        expect(image.id not in ids, f"image {image.id} still listed after delete")

    r.step("openstacksdk delete_image", delete, image)

    if conn is not None:
        conn.close()


# Interoperable image import: the image is created empty, its data staged
# (glance-direct) or fetched by the server (web-download), and a background
# task takes it from `importing` to `active`, or back to `queued` with the
# store in os_glance_failed_import if the import fails. Each client drives
# the workflow its own way; the results are checked through the same client,
# and the image's tasks through GET /v2/images/{id}/tasks.

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
REQUEST_ID_RE = "req-" + UUID_RE
IMPORT_METHODS = ("glance-direct", "web-download")

# How often an import in progress is looked at; the whole wait is bounded
# by TIMEOUT.
POLL_INTERVAL = 0.5


def until_imported(show, what):
    """Calls show() until the image is no longer importing, and returns its view.

    show() returns (status, view, evidence). The import runs in the server's
    background after the 202, so the image is `importing` for a while; a
    wait bounded by TIMEOUT makes a stuck import fail the step instead of
    hanging the run.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        status, view, evidence = show()
        if status != "importing":
            return view
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what}: still importing after {TIMEOUT} s\n{evidence}")
        time.sleep(POLL_INTERVAL)


def check_import_task(tasks, image_id, method, uri=None, status="success", request_id=None, evidence=""):
    """Checks the tasks of an image imported once: one api_image_import task.

    tasks are dicts with Glance's task fields (as in the tasks API's JSON);
    request_id, if given, is the x-openstack-request-id of the import call,
    which Glance records in the task.
    """

    def check(cond, message):
        expect(cond, f"{message}\ntasks: {json.dumps(tasks, indent=2)}\n{evidence}".rstrip())

    check(isinstance(tasks, list) and len(tasks) == 1, f"expected exactly one task of image {image_id}")
    task = tasks[0]
    fields = [("status", status), ("image_id", image_id)]
    if "type" in task:  # glanceclient's table has no type column
        fields.append(("type", "api_image_import"))
    for key, want in fields:
        check(task.get(key) == want, f"task {key}: expected {want!r}, got {task.get(key)!r}")
    import_req = (task.get("input") or {}).get("import_req") or {}
    method_req = import_req.get("method") or {}
    check(method_req.get("name") == method, f"task input.import_req.method.name is not {method!r}")
    if uri is not None:
        check(method_req.get("uri") == uri, f"task input.import_req.method.uri is not {uri!r}")
    task_request_id = task.get("request_id") or ""
    check(re.fullmatch(REQUEST_ID_RE, task_request_id), f"task request_id {task_request_id!r} is not req-<uuid>")
    if request_id is not None:
        check(task_request_id == request_id, f"task request_id is not the import call's {request_id!r}")
    if status == "failure":
        # A failed import must say why; a successful one may be silent.
        check(task.get("message"), "the failed task has no message")


def glance_task_rows(cmd):
    """Reads `glance --verbose image-tasks` into task dicts with the API's field names.

    glanceclient prints one table row per task; with --verbose the Input and
    Result columns hold Python reprs of the JSON objects.
    """
    lines = [line for line in cmd.stdout.splitlines() if line.startswith("|")]
    expect(lines, "image-tasks printed no table", cmd)
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        expect(len(cells) == len(header), f"image-tasks row has {len(cells)} cells, header {len(header)}", cmd)
        row = dict(zip(header, cells))
        try:
            task_input = ast.literal_eval(row.get("Input", "None"))
        except (ValueError, SyntaxError):
            task_input = None
        rows.append({
            "id": row.get("Task Id"),
            "image_id": row.get("Image Id"),
            "status": row.get("Status"),
            "message": row.get("Message"),
            "request_id": row.get("Request Id"),
            "input": task_input,
        })
    return rows


def missing_url(web_url):
    """A URL on the same loopback web server that answers 404."""
    return urllib.parse.urljoin(web_url, "no-such-image.qcow2")


# glanceclient: image-create-via-import, which creates the image, stages the
# file (glance-direct) and calls the import, after asking import-info
# whether the method is offered.


def glance_import_info_flow(r, env):
    def import_info():
        cmd = env.glance("import-info")
        raw = parse_table(cmd.stdout).get("import-methods", "")
        try:
            methods = json.loads(raw).get("value")
        except (json.JSONDecodeError, AttributeError):
            methods = None
        expect(isinstance(methods, list), f"import-methods {raw!r} has no value list", cmd)
        for method in IMPORT_METHODS:
            expect(method in methods, f"{method} missing from import-methods {methods}", cmd)

    r.step("glance import-info lists glance-direct and web-download", import_info)


def glance_import_flow(r, env, method, source, uri=None):
    """One image through `glance image-create-via-import --import-method METHOD`."""
    name = f"import-glanceclient-{method}"
    label = f"glance {method} import"

    def create():
        # glanceclient takes any stdin that is not a terminal for image data
        # and then refuses --file (two sources) and web-download (data
        # given), so the command gets a terminal, as typed in a shell.
        cmd = env.glance(
            "image-create-via-import",
            "--name", name,
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--import-method", method,
            *source,
            terminal=True,
        )
        table = parse_table(cmd.stdout)
        image_id = table.get("id", "")
        expect(re.fullmatch(UUID_RE, image_id), "no image id in the image-create-via-import table", cmd)
        expect_eq(table.get("name"), name, "name", cmd)
        # The command shows the image right after the 202 of the import call.
        status = table.get("status")
        expect(status in ("importing", "active"), f"status {status!r} is neither importing nor active", cmd)
        return image_id

    image_id = r.step(f"glance image-create-via-import --import-method {method} {source[0]}", create)

    def show():
        def once():
            cmd = env.glance("image-show", "--max-column-width", "1000", image_id)
            table = parse_table(cmd.stdout)
            return table.get("status"), (table, cmd), cmd.describe()

        return until_imported(once, label)

    def active():
        t, cmd = show()
        expect_eq(t.get("status"), "active", "status", cmd)
        expect_eq(t.get("disk_format"), "qcow2", "disk_format", cmd)
        expect_eq(t.get("container_format"), "bare", "container_format", cmd)
        expect_eq(t.get("size"), str(env.size), "size", cmd)
        expect_eq(t.get("checksum"), env.md5, "checksum", cmd)
        expect_eq(t.get("os_hash_algo"), "sha512", "os_hash_algo", cmd)
        expect_eq(t.get("os_hash_value"), env.sha512, "os_hash_value", cmd)
        if env.virtual_size is not None:
            expect_eq(t.get("virtual_size"), str(env.virtual_size), "virtual_size", cmd)
        # Nothing left to import to, and nothing failed.
        expect_eq(t.get("os_glance_importing_to_stores", ""), "", "os_glance_importing_to_stores", cmd)
        expect_eq(t.get("os_glance_failed_import", ""), "", "os_glance_failed_import", cmd)

    imported = r.step(
        f"glance image-show: the {method} import becomes active with the file's size, checksum, "
        "os_hash_value and virtual_size",
        active,
        image_id,
    )

    def download():
        out = env.scratch(f"glance-{method}-download.img")
        cmd = env.glance("image-download", "--file", str(out), image_id)
        expect(out.exists(), f"image-download did not write {out}", cmd)
        expect_same_bytes(env, out, "downloaded image", cmd)

    r.step(f"glance image-download ({method} import)", download, imported)

    def tasks():
        cmd = env.glance("--verbose", "image-tasks", image_id)
        check_import_task(glance_task_rows(cmd), image_id, method, uri=uri, evidence=cmd.describe())

    r.step(f"glance image-tasks ({method} import): one successful import task", tasks, imported)

    def delete():
        env.glance("image-delete", image_id)
        cmd = env.glance("image-show", image_id, check=False)
        expect(cmd.rc != 0, "image-show still succeeds after image-delete", cmd)

    r.step(f"glance image-delete ({method} import)", delete, image_id)


def glance_failed_import_flow(r, env, web_url):
    """A web-download the server cannot fetch: the image returns to queued."""
    name = "import-glanceclient-web-download-404"
    uri = missing_url(web_url)

    def create():
        cmd = env.glance(
            "image-create-via-import",
            "--name", name,
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--import-method", "web-download",
            "--uri", uri,
            terminal=True,
        )
        image_id = parse_table(cmd.stdout).get("id", "")
        expect(re.fullmatch(UUID_RE, image_id), "no image id in the image-create-via-import table", cmd)
        return image_id

    image_id = r.step("glance image-create-via-import --import-method web-download --uri <a URL that answers 404>",
                      create)

    def queued():
        def once():
            cmd = env.glance("image-show", "--max-column-width", "1000", image_id)
            table = parse_table(cmd.stdout)
            return table.get("status"), (table, cmd), cmd.describe()

        t, cmd = until_imported(once, "failed web-download import")
        expect_eq(t.get("status"), "queued", "status after the failed import", cmd)
        expect(t.get("os_glance_failed_import"), "os_glance_failed_import is empty after the failed import", cmd)
        expect_eq(t.get("os_glance_importing_to_stores", ""), "", "os_glance_importing_to_stores", cmd)
        expect(t.get("checksum") in (None, "None", ""), "the failed import left a checksum", cmd)

    failed = r.step("glance image-show: the failed web-download is back to queued with os_glance_failed_import",
                    queued, image_id)

    def tasks():
        cmd = env.glance("--verbose", "image-tasks", image_id)
        check_import_task(glance_task_rows(cmd), image_id, "web-download", uri=uri, status="failure",
                          evidence=cmd.describe())

    r.step("glance image-tasks (failed web-download): one failed task with a message", tasks, failed)

    def delete():
        env.glance("image-delete", image_id)
        cmd = env.glance("image-show", image_id, check=False)
        expect(cmd.rc != 0, "image-show still succeeds after image-delete", cmd)

    r.step("glance image-delete (failed web-download)", delete, image_id)


# openstackclient: `image create --import` (glance-direct through the SDK)
# and `image import --method web-download` on a queued image.


def osc_imported_steps(r, env, image_id, started, method, uri=None):
    """Waits for an import started with openstackclient and checks its result.

    started is the result of the step that started the import; without it
    only the image is deleted.
    """
    label = f"openstack {method} import"

    def active():
        def once():
            cmd = env.openstack("image", "show", image_id, "-f", "json")
            image = parse_json(cmd)
            return image.get("status"), (image, cmd), cmd.describe()

        i, cmd = until_imported(once, label)
        expect_eq(i.get("status"), "active", "status", cmd)
        expect_eq(i.get("disk_format"), "qcow2", "disk_format", cmd)
        expect_eq(i.get("container_format"), "bare", "container_format", cmd)
        expect_eq(i.get("size"), env.size, "size", cmd)
        expect_eq(i.get("checksum"), env.md5, "checksum", cmd)
        expect_eq(osc_field(i, "os_hash_algo"), "sha512", "os_hash_algo", cmd)
        expect_eq(osc_field(i, "os_hash_value"), env.sha512, "os_hash_value", cmd)
        if env.virtual_size is not None:
            expect_eq(i.get("virtual_size"), env.virtual_size, "virtual_size", cmd)
        expect_eq(osc_field(i, "os_glance_importing_to_stores") or "", "", "os_glance_importing_to_stores", cmd)
        expect_eq(osc_field(i, "os_glance_failed_import") or "", "", "os_glance_failed_import", cmd)

    imported = r.step(
        f"openstack image show: the {method} import becomes active with the file's size, checksum, "
        "os_hash_value and virtual_size",
        active,
        image_id,
        started,
    )

    def save():
        out = env.scratch(f"osc-{method}-save.img")
        cmd = env.openstack("image", "save", "--file", str(out), image_id)
        expect(out.exists(), f"image save did not write {out}", cmd)
        expect_same_bytes(env, out, "saved image", cmd)

    r.step(f"openstack image save ({method} import)", save, imported)

    def tasks():
        # openstackclient has no command for an image's tasks.
        body = env.get_json(f"/v2/images/{image_id}/tasks")
        check_import_task(body.get("tasks"), image_id, method, uri=uri)

    r.step(f"GET /v2/images/{{id}}/tasks ({method} import by openstackclient): one successful task", tasks, imported)

    def delete():
        env.openstack("image", "delete", image_id)
        cmd = env.openstack("image", "show", image_id, check=False)
        expect(cmd.rc != 0, "image show still succeeds after image delete", cmd)

    r.step(f"openstack image delete ({method} import)", delete, image_id)


def osc_import_flow(r, env, web_url):
    step = "openstack image create --import --file"
    # --import came with openstackclient 5.x; a client without it cannot
    # take this path at all, which is not the server's fault. If the help
    # itself fails, the step below fails with the evidence.
    try:
        offered = "--import" in env.openstack("image", "create", "--help").stdout
    except StepFailed:
        offered = True
    if not offered:
        r.not_supported(step, "this openstackclient's image create has no --import option")
    else:
        name = "import-openstackclient-glance-direct"

        def create():
            cmd = env.openstack(
                "image", "create", name,
                "--import",
                "--file", str(env.image),
                "--disk-format", "qcow2",
                "--container-format", "bare",
                "-f", "json",
            )
            image = parse_json(cmd)
            image_id = image.get("id") or ""
            expect(re.fullmatch(UUID_RE, image_id), "no image id in the image create output", cmd)
            expect_eq(image.get("name"), name, "name", cmd)
            status = image.get("status")
            expect(status in ("importing", "active"), f"status {status!r} is neither importing nor active", cmd)
            return image_id

        image_id = r.step(step, create)
        osc_imported_steps(r, env, image_id, image_id, "glance-direct")

    if not web_url:
        return
    name = "import-openstackclient-web-download"

    def create_queued():
        # Without --file, openstackclient uploads whatever a stdin that is
        # not a terminal holds (nothing, from /dev/null); at a terminal it
        # creates just the record.
        cmd = env.openstack(
            "image", "create", name,
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "-f", "json",
            terminal=True,
        )
        image = parse_json(cmd)
        image_id = image.get("id") or ""
        expect(re.fullmatch(UUID_RE, image_id), "no image id in the image create output", cmd)
        expect_eq(image.get("status"), "queued", "status", cmd)
        return image_id

    image_id = r.step("openstack image create (no data, for web-download)", create_queued)

    def import_():
        # The command checks import info and the image's status first. It
        # exits 0 even if the server refuses the import (openstacksdk's
        # import_image does not raise on an error status), so the image
        # must show that the import started.
        imported = env.openstack("image", "import", "--method", "web-download", "--uri", web_url, image_id)
        cmd = env.openstack("image", "show", image_id, "-f", "json")
        status = parse_json(cmd).get("status")
        expect(
            status in ("importing", "active"),
            f"status {status!r} after image import is neither importing nor active\n{imported.describe()}",
            cmd,
        )

    started = r.step("openstack image import --method web-download --uri", import_, image_id)
    osc_imported_steps(r, env, image_id, started, "web-download", uri=web_url)


# openstacksdk: create_image(use_import=True), and stage_image and
# import_image called one by one.


def sdk_import_flow(r, env, web_url):
    conn = r.step("openstacksdk connect (for import)", lambda: sdk_connect(env.url))

    def import_info():
        methods = conn.image.get_import_info().import_methods
        values = methods.get("value") if isinstance(methods, dict) else None
        expect(isinstance(values, list), f"import_methods {methods!r} has no value list")
        for method in IMPORT_METHODS:
            expect(method in values, f"{method} missing from import_methods {values}")

    r.step("openstacksdk get_import_info lists glance-direct and web-download", import_info, conn)

    def imported_steps(image_id, started, how, method, uri=None, request_id=None):
        """The checks of one import; started is the result of the step that started it."""

        def active():
            def once():
                image = conn.image.get_image(image_id)
                return image.status, image, f"image: {json.dumps(image.to_dict(), indent=2, default=str)}"

            image = until_imported(once, f"openstacksdk {how}")
            evidence = f"image: {json.dumps(image.to_dict(), indent=2, default=str)}"

            def check(actual, expected, what):
                expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}\n{evidence}")

            check(image.status, "active", "status")
            check(image.disk_format, "qcow2", "disk_format")
            check(image.container_format, "bare", "container_format")
            check(image.size, env.size, "size")
            check(image.checksum, env.md5, "checksum")
            check(image.hash_algo, "sha512", "os_hash_algo")
            check(image.hash_value, env.sha512, "os_hash_value")
            if env.virtual_size is not None:
                check(image.virtual_size, env.virtual_size, "virtual_size")
            props = image.properties or {}
            check(props.get("os_glance_importing_to_stores") or "", "", "os_glance_importing_to_stores")
            check(props.get("os_glance_failed_import") or "", "", "os_glance_failed_import")

        imported = r.step(
            f"openstacksdk get_image: the {how} becomes active with the file's size, checksum, "
            "os_hash_value and virtual_size",
            active,
            image_id,
            started,
        )

        def download():
            response = conn.image.download_image(image_id)
            data = response.content if hasattr(response, "content") else response
            expect_eq(len(data), env.size, "downloaded size")
            expect_eq(hashlib.md5(data).hexdigest(), env.md5, "downloaded md5")
            expect_eq(hashlib.sha512(data).hexdigest(), env.sha512, "downloaded sha512")

        r.step(f"openstacksdk download_image ({how})", download, imported)

        def tasks():
            found = [t.to_dict() for t in conn.image.image_tasks(image_id)]
            check_import_task(found, image_id, method, uri=uri, request_id=request_id)

        what = "one successful task" + (", with the import call's request id" if request_id else "")
        r.step(f"openstacksdk image_tasks ({how}): {what}", tasks, imported)

        def delete():
            conn.image.delete_image(image_id, ignore_missing=False)
            expect(conn.image.find_image(image_id) is None, f"image {image_id} still found after delete")

        r.step(f"openstacksdk delete_image ({how})", delete, image_id)

    # create_image does it all: create, stage the file, import. It returns
    # the image as created (queued), and wait=True does not wait for an
    # import (only for the old tasks API), so the steps after look it up.
    def create_import():
        image = conn.image.create_image(
            "import-openstacksdk-use-import",
            filename=str(env.image),
            disk_format="qcow2",
            container_format="bare",
            use_import=True,
            wait=True,
            timeout=TIMEOUT,
            allow_duplicates=True,
        )
        expect(image is not None, "create_image returned nothing")
        status = conn.image.get_image(image.id).status
        expect(status in ("importing", "active"), f"status {status!r} after create_image: not importing or active")
        return image.id

    image_id = r.step("openstacksdk create_image(use_import=True, filename=...)", create_import, conn)
    imported_steps(image_id, image_id, "create_image(use_import=True)", "glance-direct")

    def create_queued(name):
        image = conn.image.create_image(name, disk_format="qcow2", container_format="bare", allow_duplicates=True)
        expect_eq(image.status, "queued", "status of the new image")
        # The server says in a header which import methods the image may use.
        expect(
            set(IMPORT_METHODS) <= set(image.image_import_methods or []),
            f"OpenStack-image-import-methods {image.image_import_methods!r} lacks {IMPORT_METHODS}",
        )
        return image

    def import_(image, method, uri=None):
        response = conn.image.import_image(image, method=method, uri=uri)
        evidence = f"status {response.status_code}, headers {dict(response.headers)}, body {response.text[:2000]!r}"
        expect(response.status_code == 202, f"POST /v2/images/{image.id}/import: expected 202\n{evidence}")
        request_id = response.headers.get("x-openstack-request-id", "")
        expect(re.fullmatch(REQUEST_ID_RE, request_id), f"x-openstack-request-id is not req-<uuid>\n{evidence}")
        return request_id

    def stage():
        image = create_queued("import-openstacksdk-glance-direct")
        staged = conn.image.stage_image(image, filename=str(env.image))
        expect_eq(staged.status, "uploading", "status after stage_image")
        return image

    staged = r.step("openstacksdk create_image (no data) + stage_image: uploading", stage, conn)
    request_id = r.step(
        "openstacksdk import_image(method='glance-direct'): 202 with a request id",
        lambda: import_(staged, "glance-direct"),
        staged,
    )
    imported_steps(staged and staged.id, request_id, "stage_image + import_image(glance-direct)",
                   "glance-direct", request_id=request_id)

    if web_url:
        queued = r.step("openstacksdk create_image (no data, for web-download)",
                        lambda: create_queued("import-openstacksdk-web-download"), conn)
        request_id = r.step(
            "openstacksdk import_image(method='web-download', uri=...): 202 with a request id",
            lambda: import_(queued, "web-download", web_url),
            queued,
        )
        imported_steps(queued and queued.id, request_id, "import_image(web-download)", "web-download",
                       uri=web_url, request_id=request_id)

    if conn is not None:
        conn.close()


def import_flow(r, env, web_url):
    glance_import_info_flow(r, env)
    glance_import_flow(r, env, "glance-direct", ["--file", str(env.image)])
    if web_url:
        glance_import_flow(r, env, "web-download", ["--uri", web_url], uri=web_url)
        glance_failed_import_flow(r, env, web_url)
    osc_import_flow(r, env, web_url)
    sdk_import_flow(r, env, web_url)


# Metadata definitions, as admin (lab mode): glanceclient's md-* commands,
# openstackclient's `image metadef`, and openstacksdk.

MD_NAMESPACE = "OCELLUS::Clients::Test"
MD_OSC_NAMESPACE = "OCELLUS::Clients::Osc"


def metadefs_flow(r, env):
    def starter_set():
        # A fresh data directory loads the starter namespaces, as Glance's db_load_metadefs does.
        cmd = env.glance("md-namespace-list")
        expect("OS::Compute::Watchdog" in cmd.stdout, "the starter namespace OS::Compute::Watchdog is not listed", cmd)
        cmd = env.glance("md-resource-type-list")
        expect("OS::Glance::Image" in cmd.stdout, "OS::Glance::Image missing from md-resource-type-list", cmd)

    r.step("glance md-namespace-list / md-resource-type-list show the starter set", starter_set)

    def create():
        cmd = env.glance(
            "md-namespace-create", MD_NAMESPACE,
            "--display-name", "Client test",
            "--description", "made by seed_flows.py",
            "--visibility", "public",
        )
        table = parse_table(cmd.stdout)
        expect_eq(table.get("namespace"), MD_NAMESPACE, "namespace", cmd)
        expect_eq(table.get("visibility"), "public", "visibility", cmd)
        return True

    created = r.step("glance md-namespace-create", create)

    def property_():
        schema = json.dumps({"type": "integer", "title": "Cores", "minimum": 1, "maximum": 64})
        cmd = env.glance(
            "md-property-create", MD_NAMESPACE,
            "--name", "cores", "--title", "Cores", "--type", "integer", "--schema", schema,
        )
        expect("cores" in cmd.stdout, "the new property is not shown", cmd)
        cmd = env.glance("md-property-list", MD_NAMESPACE)
        expect("cores" in cmd.stdout, "md-property-list does not list the property", cmd)
        cmd = env.glance("md-property-show", MD_NAMESPACE, "cores")
        table = parse_table(cmd.stdout)
        expect_eq(table.get("type"), "integer", "type", cmd)
        expect_eq(table.get("maximum"), "64", "maximum", cmd)

    r.step("glance md-property-create / md-property-list / md-property-show", property_, created)

    def object_():
        schema = json.dumps({"properties": {"color": {"type": "string", "title": "Color", "enum": ["red", "blue"]}}})
        env.glance("md-object-create", MD_NAMESPACE, "--name", "Widget", "--schema", schema)
        cmd = env.glance("md-object-show", MD_NAMESPACE, "Widget")
        expect("color" in cmd.stdout, "md-object-show does not show the object's property", cmd)
        cmd = env.glance("md-object-list", MD_NAMESPACE)
        expect("Widget" in cmd.stdout, "md-object-list does not list the object", cmd)

    r.step("glance md-object-create / md-object-show / md-object-list", object_, created)

    def tags():
        env.glance("md-tag-create-multiple", MD_NAMESPACE, "--names", "alpha,beta", "--delim", ",")
        env.glance("md-tag-create", MD_NAMESPACE, "--name", "gamma")
        cmd = env.glance("md-tag-list", MD_NAMESPACE)
        for tag in ("alpha", "beta", "gamma"):
            expect(tag in cmd.stdout, f"tag {tag} missing from md-tag-list", cmd)
        env.glance("md-tag-delete", MD_NAMESPACE, "beta")
        cmd = env.glance("md-tag-list", MD_NAMESPACE)
        expect("beta" not in cmd.stdout, "the deleted tag is still listed", cmd)

    r.step("glance md-tag-create-multiple / md-tag-create / md-tag-list / md-tag-delete", tags, created)

    def associate():
        env.glance("md-resource-type-associate", MD_NAMESPACE, "--name", "OS::Glance::Image", "--prefix", "ct_")
        cmd = env.glance("md-namespace-resource-type-list", MD_NAMESPACE)
        expect("OS::Glance::Image" in cmd.stdout, "the association is not listed", cmd)
        cmd = env.glance("md-namespace-list", "--resource-types", "OS::Glance::Image")
        expect(MD_NAMESPACE in cmd.stdout, "the namespace is not listed for its resource type", cmd)

    r.step("glance md-resource-type-associate / md-namespace-resource-type-list", associate, created)

    def show_and_update():
        env.glance("md-namespace-update", MD_NAMESPACE, "--display-name", "Client test, renamed", "--protected", "true")
        cmd = env.glance("md-namespace-show", MD_NAMESPACE)
        table = parse_table(cmd.stdout)
        expect_eq(table.get("display_name"), "Client test, renamed", "display_name", cmd)
        expect_eq(table.get("protected"), "True", "protected", cmd)
        cmd = env.glance("md-namespace-delete", MD_NAMESPACE, check=False)
        expect(cmd.rc != 0 and "403" in cmd.stdout + cmd.stderr, "a protected namespace was deleted", cmd)
        env.glance("md-namespace-update", MD_NAMESPACE, "--protected", "false")

    r.step("glance md-namespace-update / md-namespace-show; a protected namespace is not deleted", show_and_update, created)

    def delete():
        env.glance("md-namespace-delete", MD_NAMESPACE)
        cmd = env.glance("md-namespace-show", MD_NAMESPACE, check=False)
        expect(cmd.rc != 0 and "404" in cmd.stdout + cmd.stderr, "the deleted namespace is still shown", cmd)

    r.step("glance md-namespace-delete (its properties, objects and tags with it)", delete, created)

    def osc():
        cmd = env.openstack(
            "image", "metadef", "namespace", "create", MD_OSC_NAMESPACE,
            "--display-name", "Osc test", "--public", "-f", "json",
        )
        expect_eq(parse_json(cmd).get("namespace"), MD_OSC_NAMESPACE, "namespace", cmd)
        cmd = env.openstack("image", "metadef", "namespace", "list", "-f", "json")
        names = [row.get("namespace") or row.get("Namespace") for row in parse_json(cmd)]
        expect(MD_OSC_NAMESPACE in names, "the namespace is not listed", cmd)
        cmd = env.openstack("image", "metadef", "namespace", "show", MD_OSC_NAMESPACE, "-f", "json")
        expect_eq(parse_json(cmd).get("display_name"), "Osc test", "display_name", cmd)
        env.openstack(
            "image", "metadef", "property", "create", MD_OSC_NAMESPACE,
            "--name", "speed", "--title", "Speed", "--type", "integer",
            "--schema", json.dumps({"minimum": 1}),
        )
        cmd = env.openstack("image", "metadef", "property", "list", MD_OSC_NAMESPACE, "-f", "json")
        expect("speed" in cmd.stdout, "the property is not listed", cmd)
        cmd = env.openstack("image", "metadef", "resource", "type", "list", "-f", "json")
        expect("OS::Nova::Flavor" in cmd.stdout, "OS::Nova::Flavor missing from the resource types", cmd)
        env.openstack("image", "metadef", "namespace", "delete", MD_OSC_NAMESPACE)
        cmd = env.openstack("image", "metadef", "namespace", "show", MD_OSC_NAMESPACE, check=False)
        expect(cmd.rc != 0, "the deleted namespace is still shown", cmd)

    r.step("openstack image metadef namespace create / list / show / property create / delete", osc)

    def sdk():
        conn = sdk_connect(env.url)
        names = [namespace.namespace for namespace in conn.image.metadef_namespaces()]
        expect("OS::Compute::Hardware" in names or "OS::Compute::Watchdog" in names,
               f"no starter namespace among {names}")
        types = [resource_type.name for resource_type in conn.image.metadef_resource_types()]
        expect("OS::Cinder::Volume" in types, f"OS::Cinder::Volume missing from {types}")
        namespace = conn.image.create_metadef_namespace(namespace="OCELLUS::Clients::Sdk", visibility="private")
        shown = conn.image.get_metadef_namespace("OCELLUS::Clients::Sdk")
        expect_eq(shown.visibility, "private", "visibility")
        conn.image.delete_metadef_namespace(namespace)

    r.step("openstacksdk metadef_namespaces / metadef_resource_types / create / get / delete", sdk)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="unversioned server root, e.g. http://127.0.0.1:9292")
    parser.add_argument("image", help="disk image file to upload")
    parser.add_argument(
        "--web-url",
        help="URL of the same image on a web server the server may fetch from, for the web-download imports",
    )
    args = parser.parse_args()

    # The in-process SDK reads the same variables the CLIs do.
    for key in [k for k in os.environ if k.startswith("OS_")]:
        del os.environ[key]

    with tempfile.TemporaryDirectory(prefix="ocellus-clients-") as workdir:
        env = Env(args.url, args.image, workdir)
        os.environ.update({k: env.cli_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "no_proxy", "NO_PROXY")})
        print(f"image: {env.image} ({env.size} bytes, virtual size {env.virtual_size}, md5 {env.md5})", flush=True)
        if args.web_url:
            print(f"web-download source: {args.web_url}", flush=True)
        else:
            print("info: no --web-url, so the web-download imports are left out", flush=True)
        r = Runner()
        glance_flow(r, env)
        osc_flow(r, env)
        sdk_flow(r, env)
        import_flow(r, env, args.web_url)
        metadefs_flow(r, env)
        return r.summary()


if __name__ == "__main__":
    sys.exit(main())
