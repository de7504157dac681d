#!/usr/bin/env python3
"""Client-compatibility test of ocellus with API keys over HTTPS.

Runs the real OpenStack clients against an ocellus server started with
auth = "keys" and a CA-signed TLS certificate, and authenticates them the
ways operators do: application credentials and the Keystone password method
through the server's Keystone-compatible /v3 (openstackclient, glanceclient,
openstacksdk with a clouds.yaml), and an API key or a token given straight to
glanceclient. It also drives `ocellus key` against the running server (its
admin endpoint over TLS) and checks with curl that revoking a key ends the
key and its tokens at once, and that anonymous requests get Keystone's 401.

Like seed_flows.py, every step prints "ok: <step>", "FAIL: <step>" (with the
evidence) or "skip: <step>", the last line is "N passed, M failed" (plus
", K skipped" if any) and the exit status is 0 only if every step passed.

Usage: keys_flows.py URL IMAGE --cacert CA --config FILE --ocellus BIN
                     --admin-key ADMIN.json --member-key MEMBER.json
  URL     the unversioned root of the server, e.g. https://127.0.0.1:9292
  IMAGE   a local disk image file to upload (a qcow2 made by run.sh)
  CA      the PEM certificate of the CA that signed the server's certificate
  FILE    the server's TOML settings (listen, data_dir, tls_cert, ...)
  BIN     the ocellus binary, for `ocellus key`
  *.json  the output of `ocellus key create --json`, run by run.sh before
          the server started: an admin key of project "admin" and a member
          key of another project

Every client runs as a subprocess with the global timeout, a fresh HOME and
no OS_* (or OCELLUS_*) variable but the ones the step sets.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

from common import (
    TIMEOUT,
    Runner,
    StepFailed,
    expect,
    expect_eq,
    find_tool,
    isolated_env,
    parse_json,
    run_command,
)

# Variables that would change whom the clients trust or which server or key
# `ocellus key` uses; the steps set what they need explicitly.
UNTRUSTED_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")

# Names of what the flows create; run.sh names the offline keys.
IMAGE_NAME = "cirros"
PRIVATE_IMAGE_NAME = "cirros-member-private"
LIVE_KEY_NAME = "ci-live"
LIVE_KEY_PROJECT = "beta"

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Key:
    """An API key as `ocellus key create --json` prints it."""

    def __init__(self, view):
        self.id = view["id"]
        self.name = view["name"]
        self.project = view["project"]
        self.project_id = view["project_id"]
        self.role = view["role"]
        self.secret = view["secret"]
        # The whole key string, ock-<id>-<secret>: usable as a token.
        self.key = view["key"]

    @classmethod
    def load(cls, path):
        return cls(json.loads(Path(path).read_text()))


class Response:
    """One HTTP exchange made with curl."""

    def __init__(self, status, headers, body, cmd):
        self.status = status
        self.headers = headers
        self.body = body
        self.cmd = cmd

    def json(self):
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as e:
            raise StepFailed(f"the body is not JSON ({e})\n{self.describe()}") from None

    def describe(self):
        headers = "\n".join(f"    {k}: {v}" for k, v in self.headers.items()) or "    (none)"
        return f"{self.cmd.describe()}\nstatus: {self.status}\nheaders:\n{headers}\nbody:\n    {self.body[:2000]}"


class Env:
    """The server, the files run.sh made, and how to run each client."""

    def __init__(self, args, workdir):
        self.url = args.url.rstrip("/")
        self.image = Path(args.image).resolve()
        data = self.image.read_bytes()
        self.size = len(data)
        self.md5 = hashlib.md5(data).hexdigest()
        self.cacert = str(Path(args.cacert).resolve())
        self.config = str(Path(args.config).resolve())
        with open(self.config, "rb") as f:
            self.data_dir = Path(tomllib.load(f)["data_dir"])
        self.ocellus = str(Path(args.ocellus).resolve())
        self.admin = Key.load(args.admin_key)
        self.member = Key.load(args.member_key)
        self.workdir = Path(workdir)

    def client_env(self, extra=None):
        """A clean environment with a HOME of its own for one command."""
        env = isolated_env(tempfile.mkdtemp(prefix="cmd-", dir=self.workdir))
        for var in [k for k in env if k.startswith("OCELLUS_") or k in UNTRUSTED_VARS]:
            del env[var]
        env.update(extra or {})
        return env

    def run(self, argv, extra_env=None, check=True):
        return run_command(argv, self.client_env(extra_env), self.workdir, check=check)

    # Credentials, as the OS_* variables of an openrc file.

    def appcred_vars(self, key):
        return {
            "OS_AUTH_URL": f"{self.url}/v3",
            "OS_AUTH_TYPE": "v3applicationcredential",
            "OS_APPLICATION_CREDENTIAL_ID": key.id,
            "OS_APPLICATION_CREDENTIAL_SECRET": key.secret,
            "OS_IDENTITY_API_VERSION": "3",
            "OS_CACERT": self.cacert,
        }

    def password_vars(self, key, auth_url=None):
        # The Keystone user name of a key is its name; the password its secret.
        return {
            "OS_AUTH_URL": auth_url or f"{self.url}/v3",
            "OS_USERNAME": key.name,
            "OS_PASSWORD": key.secret,
            "OS_PROJECT_NAME": key.project,
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_IDENTITY_API_VERSION": "3",
            "OS_CACERT": self.cacert,
        }

    # The clients.

    def openstack(self, *args, creds, check=True):
        return self.run([find_tool("openstack"), *args], creds, check=check)

    def glance(self, *args, creds=None, check=True):
        return self.run([find_tool("glance"), *args], creds, check=check)

    def ocellus_key(self, *args, check=True):
        # The config names the listen address, the data directory (whose
        # database the server holds, so the CLI turns to the admin endpoint)
        # and tls_cert (so it speaks https); the server certificate is signed
        # by the CA, so the CA is the trust root. No bootstrap key file exists
        # (the keys were provisioned offline), so the admin key is explicit.
        argv = [
            self.ocellus, "key", *args,
            "--config", self.config,
            "--cacert", self.cacert,
            "--admin-key", self.admin.key,
        ]
        return self.run(argv, check=check)

    def curl(self, method, path, token=None, body=None):
        """Makes one request with curl, trusting only the test CA."""
        out = Path(tempfile.mkdtemp(prefix="curl-", dir=self.workdir))
        argv = [
            "curl", "-sS",
            "--cacert", self.cacert,
            "--max-time", str(TIMEOUT),
            "-X", method,
            "-D", str(out / "headers"),
            "-o", str(out / "body"),
            "-w", "%{http_code}",
            "-H", "Accept: application/json",
        ]
        if token is not None:
            argv += ["-H", f"X-Auth-Token: {token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        argv.append(self.url + path)
        cmd = self.run(argv)
        headers = {}
        for line in (out / "headers").read_text(errors="replace").splitlines()[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body_text = (out / "body").read_text(errors="replace") if (out / "body").exists() else ""
        return Response(int(cmd.stdout.strip() or 0), headers, body_text, cmd)

    def issue_token(self, key):
        """Exchanges a key for a token by the application_credential method."""
        body = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": key.id, "secret": key.secret},
                }
            }
        }
        resp = self.curl("POST", "/v3/auth/tokens", body=body)
        expect_eq(resp.status, 201, "POST /v3/auth/tokens status", resp)
        token = resp.headers.get("x-subject-token", "")
        expect(token.startswith("oct-"), f"X-Subject-Token {token!r} is not an ocellus token", resp)
        return token, resp.json().get("token", {})


def expect_status(resp, status, what):
    expect(resp.status == status, f"{what}: expected HTTP {status}, got {resp.status}", resp)


def osc_rows(cmd):
    rows = parse_json(cmd)
    expect(isinstance(rows, list), "image list output is not a JSON list", cmd)
    return {row.get("ID"): row for row in rows}


def failed_with(cmd, status):
    """Whether a CLI failed and its output names the HTTP status."""
    return cmd.rc != 0 and str(status) in cmd.stdout + cmd.stderr


# a. The keys run.sh created with `ocellus key create` while the server was stopped.


def offline_keys_flow(r, env):
    def no_bootstrap():
        # The server writes a bootstrap admin key only when no key exists.
        path = env.data_dir / "bootstrap-admin.key"
        expect(not path.exists(), f"{path} exists although keys were provisioned before the first start")

    r.step("offline keys: the server wrote no bootstrap key", no_bootstrap)

    def key_works(key, admin):
        _, token = env.issue_token(key)
        roles = {role.get("name") for role in token.get("roles", [])}
        expect_eq(token.get("methods"), ["application_credential"], "methods")
        expect_eq(token.get("project", {}).get("name"), key.project, "token project name")
        expect_eq(token.get("project", {}).get("id"), key.project_id, "token project id")
        expect_eq(token.get("user", {}).get("name"), key.name, "token user name")
        expect(key.role in roles, f"role {key.role} missing from the token's roles {sorted(roles)}")
        expect_eq("admin" in roles, admin, "admin role in the token")
        resp = env.curl("GET", "/v2/images", token=key.key)
        expect_status(resp, 200, "GET /v2/images with the key")

    r.step(f"offline key {env.admin.name} (admin of {env.admin.project}) works", lambda: key_works(env.admin, True))
    r.step(f"offline key {env.member.name} (member of {env.member.project}) works", lambda: key_works(env.member, False))


# i. No credential at all.


def anonymous_flow(r, env):
    def anonymous():
        resp = env.curl("GET", "/v2/images")
        expect_status(resp, 401, "GET /v2/images without a credential")
        # keystonemiddleware's answer, which tells clients where to authenticate.
        expect_eq(resp.headers.get("www-authenticate"), f'Keystone uri="{env.url}/v3"', "WWW-Authenticate", resp)

    r.step("curl without a credential gets 401 and WWW-Authenticate: Keystone uri=", anonymous)


# b. openstackclient with an admin's application credential.


def appcred_flow(r, env):
    creds = env.appcred_vars(env.admin)

    def create():
        cmd = env.openstack(
            "image", "create", IMAGE_NAME,
            "--file", str(env.image),
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--public",
            "-f", "json",
            creds=creds,
        )
        image = parse_json(cmd)
        image_id = image.get("id") or ""
        expect(re.fullmatch(UUID_RE, image_id), "no image id in the image create output", cmd)
        expect_eq(image.get("status"), "active", "status", cmd)
        expect_eq(image.get("visibility"), "public", "visibility", cmd)
        return image_id

    image_id = r.step("openstack image create --public (application credential, admin)", create)

    def list_():
        cmd = env.openstack("image", "list", "--long", "-f", "json", creds=creds)
        rows = osc_rows(cmd)
        expect(image_id in rows, f"image {image_id} missing from image list", cmd)
        row = rows[image_id]
        expect_eq(row.get("Name"), IMAGE_NAME, "Name", cmd)
        expect_eq(row.get("Status"), "active", "Status", cmd)
        expect_eq(row.get("Checksum"), env.md5, "Checksum (md5 of the file)", cmd)

    r.step("openstack image list (application credential) shows it with the file's md5", list_, image_id)
    return image_id


# c, d. openstackclient with the password method, as a member of another project.


def password_flow(r, env, public_id):
    creds = env.password_vars(env.member)

    def list_(creds):
        cmd = env.openstack("image", "list", "-f", "json", creds=creds)
        rows = osc_rows(cmd)
        expect(public_id in rows, f"public image {public_id} missing from image list", cmd)

    r.step(
        f"openstack image list (password, member of {env.member.project}) sees the public image",
        lambda: list_(creds),
        public_id,
    )

    def create_public():
        cmd = env.openstack(
            "image", "create", "cirros-member-public",
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--public",
            creds=creds,
            check=False,
        )
        expect(failed_with(cmd, 403), "a member's --public create did not fail with 403", cmd)

    r.step("openstack image create --public as a member is refused (403)", create_public)

    def create_private():
        cmd = env.openstack(
            "image", "create", PRIVATE_IMAGE_NAME,
            "--file", str(env.image),
            "--disk-format", "qcow2",
            "--container-format", "bare",
            "--private",
            "-f", "json",
            creds=creds,
        )
        image = parse_json(cmd)
        image_id = image.get("id") or ""
        expect(re.fullmatch(UUID_RE, image_id), "no image id in the image create output", cmd)
        expect_eq(image.get("status"), "active", "status", cmd)
        expect_eq(image.get("visibility"), "private", "visibility", cmd)
        expect_eq(image.get("checksum"), env.md5, "checksum", cmd)
        owner = image.get("owner") or image.get("owner_id") or image.get("project_id")
        expect_eq(owner, env.member.project_id, "owner", cmd)
        return image_id

    private_id = r.step("openstack image create --private as a member", create_private)

    r.step(
        "openstack image list (password, auth URL /identity without a version)",
        lambda: list_(env.password_vars(env.member, auth_url=f"{env.url}/identity")),
        public_id,
    )
    return private_id


# e, f. glanceclient: a key or token given directly, and its own Keystone auth.


def glance_flow(r, env, public_id, private_id):
    def image_list(cmd, *ids):
        for image_id in ids:
            expect(image_id in cmd.stdout, f"image {image_id} missing from image-list", cmd)

    def with_key():
        # The image URL and a token together make glanceclient skip Keystone;
        # an API key is accepted wherever a token is. No OS_* variable is set
        # at all (glanceclient 4.13 crashes if OS_AUTH_TYPE is set here).
        cmd = env.glance(
            "--os-image-url", env.url,
            "--os-auth-token", env.member.key,
            "--os-cacert", env.cacert,
            "image-list",
        )
        image_list(cmd, public_id, private_id)

    r.step("glance --os-auth-token <API key> image-list", with_key, public_id, private_id)

    def token_issue():
        cmd = env.openstack("token", "issue", "-f", "value", "-c", "id", creds=env.appcred_vars(env.admin))
        token = cmd.stdout.strip()
        expect(token.startswith("oct-"), "openstack token issue printed no ocellus token", cmd)
        return token

    token = r.step("openstack token issue (application credential)", token_issue)

    def with_token():
        # glanceclient cannot use application credentials; this is the
        # documented workaround: a token from openstackclient.
        cmd = env.glance(
            "--os-image-url", env.url,
            "--os-auth-token", token,
            "--os-cacert", env.cacert,
            "image-list",
        )
        image_list(cmd, public_id)

    r.step("glance --os-auth-token <token from openstack token issue> image-list", with_token, token, public_id)

    def with_password():
        cmd = env.glance("image-list", creds=env.password_vars(env.member))
        image_list(cmd, public_id, private_id)

    r.step("glance image-list (password, glanceclient's own Keystone auth)", with_password, public_id, private_id)


# g. openstacksdk as a library, configured by a clouds.yaml.


def sdk_flow(r, env, public_id):
    def connect():
        # Imported here, so that a broken install fails this step, not the run.
        import openstack
        import yaml

        clouds = {
            "clouds": {
                "ocellus": {
                    "auth_type": "v3applicationcredential",
                    "auth": {
                        "auth_url": f"{env.url}/v3",
                        "application_credential_id": env.member.id,
                        "application_credential_secret": env.member.secret,
                    },
                    "identity_api_version": 3,
                    "region_name": "RegionOne",
                    "cacert": env.cacert,
                }
            }
        }
        path = env.workdir / "sdk" / "clouds.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(clouds))
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(path)
        # The SDK has no subprocess timeout; api_timeout bounds each request.
        conn = openstack.connect(cloud="ocellus", api_timeout=TIMEOUT)
        endpoint = conn.image.get_endpoint()
        expect(endpoint.startswith(env.url), f"image endpoint {endpoint!r} from the catalog is not under {env.url}")
        return conn

    conn = r.step("openstacksdk connect (clouds.yaml, application credential, cacert)", connect)

    def images():
        ids = {i.id for i in conn.image.images()}
        expect(public_id in ids, f"public image {public_id} missing from images(): {sorted(ids)}")

    r.step("openstacksdk images() lists the public image", images, conn, public_id)

    def download():
        response = conn.image.download_image(public_id)
        data = response.content if hasattr(response, "content") else response
        expect_eq(len(data), env.size, "downloaded size")
        expect_eq(hashlib.md5(data).hexdigest(), env.md5, "downloaded md5")

    r.step("openstacksdk download_image matches the file's md5", download, conn, public_id)

    if conn is not None:
        conn.close()


# h. `ocellus key` against the running server, and revocation.


def key_cli_flow(r, env):
    def create():
        cmd = env.ocellus_key(
            "create", "--project", LIVE_KEY_PROJECT, "--role", "member", "--name", LIVE_KEY_NAME, "--json"
        )
        # The CLI says when it falls back to the server's admin endpoint.
        expect(f"admin endpoint at {env.url}" in cmd.stderr, "the CLI did not use the admin endpoint over https", cmd)
        key = Key(parse_json(cmd))
        expect(key.key.startswith(f"ock-{key.id}-"), "the printed key is not ock-<id>-<secret>", cmd)
        expect_eq(key.project, LIVE_KEY_PROJECT, "project", cmd)
        expect_eq(key.role, "member", "role", cmd)
        return key

    key = r.step("ocellus key create while the server runs (admin endpoint over TLS)", create)

    def key_works():
        expect_status(env.curl("GET", "/v2/images", token=key.key), 200, "GET /v2/images with the new key")

    r.step("curl with the new key: GET /v2/images is 200", key_works, key)

    def mint():
        token, _ = env.issue_token(key)
        expect_status(env.curl("GET", "/v2/images", token=token), 200, "GET /v2/images with its token")
        return token

    token = r.step("curl: a token minted from the new key works", mint, key)

    def list_keys(cmd):
        listing = parse_json(cmd)
        views = listing.get("keys") if isinstance(listing, dict) else None
        expect(isinstance(views, list), "key list --json has no keys list", cmd)
        return {view.get("id"): view for view in views}

    def list_():
        cmd = env.ocellus_key("list", "--json")
        views = list_keys(cmd)
        for known in (env.admin, env.member, key):
            expect(known.id in views, f"key {known.name} ({known.id}) missing from key list", cmd)
            # Only hashes are stored; the list must not even hint at a secret.
            expect(known.secret not in cmd.stdout, f"key list shows the secret of {known.name}", cmd)
        expect_eq(views[key.id].get("name"), LIVE_KEY_NAME, "name", cmd)
        expect_eq(views[key.id].get("project"), LIVE_KEY_PROJECT, "project", cmd)
        expect_eq(views[key.id].get("role"), "member", "role", cmd)
        leaked = sorted({field for view in views.values() for field in ("secret", "key", "secret_hash") if field in view})
        expect(not leaked, f"key list has secret fields {leaked}", cmd)

    r.step("ocellus key list --json (running server) shows the key, no secret", list_, key)

    def revoke():
        cmd = env.ocellus_key("revoke", key.id)
        expect(f"Revoked key {key.id}" in cmd.stdout, "revoke did not confirm", cmd)
        cmd = env.ocellus_key("list", "--json")
        expect(key.id not in list_keys(cmd), f"revoked key {key.id} still listed", cmd)

    revoked = r.step("ocellus key revoke (running server)", revoke, key)

    def key_refused():
        expect_status(env.curl("GET", "/v2/images", token=key.key), 401, "GET /v2/images with the revoked key")

    r.step("curl with the revoked key: 401", key_refused, revoked)

    def token_refused():
        expect_status(env.curl("GET", "/v2/images", token=token), 401, "GET /v2/images with the revoked key's token")

    r.step("curl with a token minted before the revocation: 401", token_refused, revoked, token)


# g. Metadata definitions with keys: the admin manages, others read public and own.


def metadefs_flow(r, env):
    admin = env.appcred_vars(env.admin)
    member = env.password_vars(env.member)
    private_ns = "OCELLUS::Keys::Private"

    def admin_creates():
        cmd = env.openstack(
            "image", "metadef", "namespace", "create", private_ns, "--private", "-f", "json", creds=admin,
        )
        expect_eq(parse_json(cmd).get("visibility"), "private", "visibility", cmd)
        return True

    created = r.step("openstack image metadef namespace create --private (admin)", admin_creates)

    def member_refused():
        cmd = env.openstack(
            "image", "metadef", "namespace", "create", "OCELLUS::Keys::Member", creds=member, check=False,
        )
        expect(failed_with(cmd, 403), "a member created a namespace", cmd)

    r.step("openstack image metadef namespace create as a member is refused (403)", member_refused)

    def member_reads_public_only():
        cmd = env.openstack("image", "metadef", "namespace", "list", "-f", "json", creds=member)
        names = {row.get("namespace") or row.get("Namespace") for row in parse_json(cmd)}
        expect("OS::Compute::Watchdog" in names, "the public starter namespace is not listed for a member", cmd)
        expect(private_ns not in names, "another project's private namespace is listed", cmd)
        cmd = env.openstack("image", "metadef", "namespace", "show", private_ns, creds=member, check=False)
        expect(failed_with(cmd, 404), "another project's private namespace is shown", cmd)

    r.step("openstack image metadef namespace list/show as a member: public ones only", member_reads_public_only, created)

    def protected_stays():
        resp = env.curl("DELETE", "/v2/metadefs/namespaces/OS::Compute::Watchdog", token=env.admin.key)
        expect_status(resp, 403, "DELETE of a protected namespace")

    r.step("curl: a protected namespace is not deleted (403)", protected_stays)

    def admin_deletes():
        env.openstack("image", "metadef", "namespace", "delete", private_ns, creds=admin)

    r.step("openstack image metadef namespace delete (admin)", admin_deletes, created)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="unversioned server root, e.g. https://127.0.0.1:9292")
    parser.add_argument("image", help="disk image file to upload")
    parser.add_argument("--cacert", required=True, help="PEM certificate of the CA that signed the server's")
    parser.add_argument("--config", required=True, help="the server's TOML settings file")
    parser.add_argument("--ocellus", required=True, help="the ocellus binary")
    parser.add_argument("--admin-key", required=True, help="`ocellus key create --json` output of an admin key")
    parser.add_argument("--member-key", required=True, help="`ocellus key create --json` output of a member key")
    args = parser.parse_args()

    # The in-process SDK reads the same variables the CLIs do.
    for key in [k for k in os.environ if k.startswith(("OS_", "OCELLUS_")) or k in UNTRUSTED_VARS]:
        del os.environ[key]

    with tempfile.TemporaryDirectory(prefix="ocellus-keys-") as workdir:
        env = Env(args, workdir)
        sdk_env = env.client_env()
        os.environ.update({k: sdk_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "no_proxy", "NO_PROXY")})
        print(f"server: {env.url}, image: {env.image} ({env.size} bytes, md5 {env.md5})", flush=True)
        r = Runner()
        offline_keys_flow(r, env)
        anonymous_flow(r, env)
        public_id = appcred_flow(r, env)
        private_id = password_flow(r, env, public_id)
        glance_flow(r, env, public_id, private_id)
        sdk_flow(r, env, public_id)
        metadefs_flow(r, env)
        key_cli_flow(r, env)
        return r.summary()


if __name__ == "__main__":
    sys.exit(main())
