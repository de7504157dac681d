"""Glance's multiple stores with the real OpenStack clients.

Runs against an ocellus server in lab mode whose stores are `fs` (the data
directory, the default) and `ceph` (a bucket on a real S3 engine):
glanceclient uploads into a chosen store, copies with the copy-image import
and deletes one store's copy; openstackclient and openstacksdk copy and
delete the same way. Every step checks the image's `stores` and its bytes
(md5, sha512, a download compared byte for byte). Output and exit status as
seed_flows.py.

Usage: stores_flows.py URL IMAGE
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

from common import Runner, StepFailed, expect, expect_eq, parse_table
from seed_flows import Env, expect_same_bytes, sdk_connect

# copy-image runs as a task; this bounds the wait for it.
COPY_WAIT = 120


def until_stores(env, image_id, want):
    """Polls the image until its `stores` is `want` and no copy is pending."""
    deadline = time.monotonic() + COPY_WAIT
    while True:
        image = env.get_json(f"/v2/images/{image_id}")
        if image.get("stores") == want and not image.get("os_glance_importing_to_stores"):
            return image
        if time.monotonic() > deadline:
            raise StepFailed(f"stores of {image_id} are {image.get('stores')!r}, not {want!r}:\n{json.dumps(image, indent=1)}")
        time.sleep(0.2)


def check_bytes(env, image):
    expect_eq(image.get("checksum"), env.md5, "checksum")
    expect_eq(image.get("os_hash_value"), env.sha512, "os_hash_value")
    expect_eq(image.get("size"), env.size, "size")


def glance_flow(r, env):
    def info():
        cmd = env.glance("stores-info")
        for store in ("fs", "ceph"):
            expect(store in cmd.stdout, f"stores-info does not list {store}", cmd)
        cmd = env.glance("stores-info", "--detail")
        expect('"s3"' in cmd.stdout or "s3" in cmd.stdout, "stores-info --detail does not show the s3 type", cmd)
        return True

    r.step("glance stores-info (--detail)", info)

    def create():
        cmd = env.glance(
            "image-create",
            "--name", "in-ceph",
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--store", "ceph",
            "--file", str(env.image),
        )
        image_id = parse_table(cmd.stdout).get("id", "")
        expect(re.fullmatch(r"[0-9a-f-]{36}", image_id), "no image id in the image-create table", cmd)
        image = until_stores(env, image_id, "ceph")
        check_bytes(env, image)
        return image_id

    image_id = r.step("glance image-create --store ceph", create)

    def download():
        out = env.scratch("from-ceph.img")
        cmd = env.glance("image-download", "--file", str(out), image_id)
        expect_same_bytes(env, out, "image downloaded from the bucket", cmd)
        return True

    r.step("glance image-download (from the bucket)", download, image_id)

    def copy():
        env.glance("image-import", "--import-method", "copy-image", "--stores", "fs", image_id)
        check_bytes(env, until_stores(env, image_id, "ceph,fs"))
        return True

    copied = r.step("glance image-import --import-method copy-image --stores fs", copy, image_id)

    def delete_from_store():
        env.glance("stores-delete", "--store", "ceph", image_id)
        until_stores(env, image_id, "fs")
        out = env.scratch("from-fs.img")
        cmd = env.glance("image-download", "--file", str(out), image_id)
        expect_same_bytes(env, out, "image downloaded after the bucket's copy went", cmd)
        # The last copy stays.
        cmd = env.glance("stores-delete", "--store", "fs", image_id, check=False)
        expect(cmd.rc != 0, "stores-delete removed the image's last copy", cmd)
        until_stores(env, image_id, "fs")
        return True

    r.step("glance stores-delete --store ceph", delete_from_store, image_id, copied)

    def delete():
        env.glance("image-delete", image_id)
        return True

    r.step("glance image-delete", delete, image_id)


def osc_flow(r, env):
    def create():
        cmd = env.openstack(
            "image", "create", "osc-stores",
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--file", str(env.image),
            "-f", "json",
        )
        image_id = json.loads(cmd.stdout)["id"]
        check_bytes(env, until_stores(env, image_id, "fs"))
        return image_id

    image_id = r.step("openstack image create (default store fs)", create)

    def copy():
        env.openstack("image", "import", "--method", "copy-image", "--store", "ceph", "--wait", image_id)
        check_bytes(env, until_stores(env, image_id, "ceph,fs"))
        cmd = env.openstack("image", "show", image_id, "-f", "json")
        shown = json.loads(cmd.stdout)
        stores = shown.get("stores") or shown.get("properties", {}).get("stores")
        expect_eq(stores, "ceph,fs", "stores in image show", cmd)
        return True

    r.step("openstack image import --method copy-image --store ceph", copy, image_id)

    def delete():
        env.openstack("image", "delete", image_id)
        return True

    r.step("openstack image delete", delete, image_id)


def sdk_flow(r, env):
    conn = sdk_connect(env.url)

    def stores():
        ids = sorted(store.id for store in conn.image.stores())
        expect_eq(ids, ["ceph", "fs"], "store ids")
        detailed = {store.id: store for store in conn.image.stores(details=True)}
        expect(detailed["fs"].is_default, "fs is not the default store")
        return True

    r.step("openstacksdk image.stores()", stores)

    def create():
        image = conn.image.create_image(
            name="sdk-stores",
            filename=str(env.image),
            disk_format="qcow2",
            container_format="bare",
            wait=True,
        )
        check_bytes(env, until_stores(env, image.id, "fs"))
        return image.id

    image_id = r.step("openstacksdk create_image", create)

    def copy():
        image = conn.image.get_image(image_id)
        conn.image.import_image(image, method="copy-image", stores=["ceph"])
        check_bytes(env, until_stores(env, image_id, "ceph,fs"))
        return True

    copied = r.step("openstacksdk import_image(method=copy-image, stores=[ceph])", copy, image_id)

    def delete_from_store():
        conn.image.delete_image(image_id, store="fs")
        until_stores(env, image_id, "ceph")
        data = conn.image.download_image(image_id).content
        expect(data == env.data, "the bytes downloaded from the bucket differ from the file")
        return True

    r.step("openstacksdk delete_image(store=fs), download from the bucket", delete_from_store, image_id, copied)

    def delete():
        conn.image.delete_image(image_id)
        return True

    r.step("openstacksdk delete_image", delete, image_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="unversioned server root, e.g. http://127.0.0.1:9292")
    parser.add_argument("image", help="disk image file to upload")
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("OS_")]:
        del os.environ[key]
    with tempfile.TemporaryDirectory(prefix="ocellus-stores-") as workdir:
        env = Env(args.url, args.image, workdir)
        os.environ.update({k: env.cli_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "no_proxy", "NO_PROXY")})
        r = Runner()
        glance_flow(r, env)
        osc_flow(r, env)
        sdk_flow(r, env)
        return r.summary()


if __name__ == "__main__":
    sys.exit(main())
