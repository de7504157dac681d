#!/usr/bin/env python3
"""Client-compatibility smoke test for ocellus.

Runs the seed flows with the real OpenStack clients against a running
ocellus server: python-glanceclient and python-openstackclient as
subprocesses (exactly as an operator would type them) and openstacksdk as a
library. Every step prints "ok: <step>", "FAIL: <step>" (with the command,
its stdout and its stderr) or "skip: <step>" when a step it depends on has
failed. The last line is "N passed, M failed" (", K skipped" is appended
only when something was skipped) and the exit status is 0 only when nothing
failed or was skipped.

Usage: seed_flows.py URL IMAGE
  URL    the unversioned root of the server, e.g. http://127.0.0.1:9292
  IMAGE  a local disk image file to upload (a qcow2 made by run.sh)

The server is expected to run in unauthenticated lab mode, so any token is
accepted and no Keystone is involved.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from common import (
    TIMEOUT,
    Cmd,
    StepFailed,
    Runner,
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

    def run(self, argv, check=True):
        """Runs a CLI with the isolated environment and the global timeout."""
        return run_command(argv, self.cli_env, self.workdir, check=check)

    def glance(self, *args, check=True):
        # The token is arbitrary because the server runs in lab mode; giving
        # both --os-image-url and --os-auth-token is what makes glanceclient
        # skip Keystone entirely.
        argv = [self.tool("glance"), "--os-image-url", self.url, "--os-auth-token", "x", *args]
        return self.run(argv, check=check)

    def openstack(self, *args, check=True):
        # The "none" auth plugin with --os-endpoint is how openstackclient
        # talks to a standalone service; the endpoint is unversioned, like a
        # real Glance catalog entry, so the client has to discover /v2.
        argv = [self.tool("openstack"), "--os-auth-type", "none", "--os-endpoint", self.url, *args]
        return self.run(argv, check=check)

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


def wait_active(conn, image_id):
    """Polls an imported image until it leaves `importing` (bounded by TIMEOUT)."""
    import time
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        image = conn.image.get_image(image_id)
        if image.status not in ("importing", "uploading", "queued") or image.properties.get("os_glance_failed_import"):
            return image
        time.sleep(0.2)
    raise StepFailed(f"image {image_id} did not become active within {TIMEOUT} s")


def check_imported(conn, env, image_id, what):
    image = wait_active(conn, image_id)
    expect_eq(image.status, "active", f"{what}: status")
    expect_eq(image.size, env.size, f"{what}: size")
    expect_eq(image.checksum, env.md5, f"{what}: checksum")
    expect_eq(image.hash_value, env.sha512, f"{what}: os_hash_value")
    if env.virtual_size is not None:
        expect_eq(image.virtual_size, env.virtual_size, f"{what}: virtual_size")
    response = conn.image.download_image(image)
    data = response.content if hasattr(response, "content") else response
    expect_eq(hashlib.sha512(data).hexdigest(), env.sha512, f"{what}: downloaded sha512")
    tasks = conn.image.get(f"/images/{image_id}/tasks").json()["tasks"]
    expect(any(t["status"] == "success" for t in tasks), f"{what}: no successful task in {tasks}")
    conn.image.delete_image(image_id, ignore_missing=False)


def import_flow(r, env, web_url):
    """Interoperable import with the real clients: glanceclient's image-create-via-import
    (glance-direct and web-download), openstackclient's image create --import, and
    openstacksdk's stage and import calls; each image is checked through the SDK."""
    conn = r.step("openstacksdk connect (import)", lambda: sdk_connect(env.url))

    def glance_import(method, *extra):
        def run():
            # glanceclient reads image data from any stdin that is not a terminal, and then
            # refuses --file and web-download; a user types these on a terminal, so the command
            # gets one (a pseudo-terminal) as its stdin.
            import pty
            import subprocess
            primary, secondary = pty.openpty()
            argv = [env.tool("glance"), "--os-image-url", env.url, "--os-auth-token", "x",
                    "image-create-via-import", "--name", f"import-{method}", "--disk-format", "qcow2",
                    "--container-format", "bare", "--import-method", method, *extra]
            try:
                proc = subprocess.run(argv, env=env.cli_env, cwd=env.workdir, stdin=secondary,
                                      capture_output=True, text=True, timeout=TIMEOUT)
            finally:
                os.close(primary)
                os.close(secondary)
            cmd = Cmd(argv, proc.returncode, proc.stdout, proc.stderr)
            expect(proc.returncode == 0, f"exited with status {proc.returncode}", cmd)
            image_id = parse_table(cmd.stdout).get("id", "")
            expect(re.fullmatch(r"[0-9a-f-]{36}", image_id), "no image id in the table", cmd)
            check_imported(conn, env, image_id, f"glance {method}")
        return run

    r.step("glance image-create-via-import glance-direct",
           glance_import("glance-direct", "--file", str(env.image)), conn)
    if web_url:
        r.step("glance image-create-via-import web-download",
               glance_import("web-download", "--uri", web_url), conn)

    def osc_import():
        help_text = env.openstack("image", "create", "--help").stdout
        if "--import" not in help_text:
            print("info: this openstackclient has no image create --import", flush=True)
            return
        cmd = env.openstack("image", "create", "--import", "--file", str(env.image), "--disk-format", "qcow2",
                            "--container-format", "bare", "-f", "json", "import-osc")
        check_imported(conn, env, parse_json(cmd)["id"], "openstack image create --import")

    r.step("openstack image create --import", osc_import, conn)

    def sdk_import(method):
        def run():
            image = conn.image.create_image(name=f"import-sdk-{method}", disk_format="qcow2",
                                            container_format="bare")
            if method == "glance-direct":
                conn.image.stage_image(image, data=env.data)
                expect_eq(conn.image.get_image(image.id).status, "uploading", "status after stage")
                conn.image.import_image(image, method="glance-direct")
            else:
                conn.image.import_image(image, method="web-download", uri=web_url)
            check_imported(conn, env, image.id, f"openstacksdk {method}")
        return run

    r.step("openstacksdk stage_image + import_image glance-direct", sdk_import("glance-direct"), conn)
    if web_url:
        r.step("openstacksdk import_image web-download", sdk_import("web-download"), conn)
    if conn is not None:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="unversioned server root, e.g. http://127.0.0.1:9292")
    parser.add_argument("image", help="disk image file to upload")
    parser.add_argument("--web-url", help="URL of the same image on a loopback web server, for web-download")
    args = parser.parse_args()

    # The in-process SDK reads the same variables the CLIs do.
    for key in [k for k in os.environ if k.startswith("OS_")]:
        del os.environ[key]

    with tempfile.TemporaryDirectory(prefix="ocellus-clients-") as workdir:
        env = Env(args.url, args.image, workdir)
        os.environ.update({k: env.cli_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "no_proxy", "NO_PROXY")})
        print(f"image: {env.image} ({env.size} bytes, virtual size {env.virtual_size}, md5 {env.md5})", flush=True)
        r = Runner()
        glance_flow(r, env)
        osc_flow(r, env)
        sdk_flow(r, env)
        import_flow(r, env, args.web_url)
        return r.summary()


if __name__ == "__main__":
    sys.exit(main())
