#!/usr/bin/env python3
"""Full disk: the server on a small ext4 that runs out of space.

Usage: full_disk.py BINARY [--keep-on-failure]

Needs root, mkfs.ext4 and a loop device: it makes a 96 MiB ext4 (no blocks
reserved for root, so the server, running as root, sees what statvfs calls
available), mounts it, and runs the server with --data-dir inside it and
--min-free-space 8 MiB. Without root or loop devices it prints `SKIP: ...` and
exits 0.

Steps (each prints ok/FAIL and its figures):
 a. create images, upload small data, PATCH them (the ledger of acked writes);
 b. uploads that cannot fit, refused with 413 before the body is read
    (Content-Length > free space; Content-Length within free space but not
    free space minus the reserve; x-openstack-image-size with a chunked
    body): image stays `queued`, tmp/ empty;
 c. a chunked upload of unknown size streaming more than fits: 413 (or the
    connection cut), image `queued`, tmp/ empty, free space back;
 d. a filler file takes the filesystem to 100 %; creates and PATCHes with
    large properties until one answers 503: never a 500, the 503 has
    Retry-After, /healthcheck answers 503, reads still work;
 e. the filler is deleted: within 10 s a create answers 201 and
    /healthcheck 200 (no restart);
 f. SIGTERM, restart: every acked image, upload and property is there;
    `BINARY check --data-dir DIR` (server stopped) exits 0.
"""

import argparse
import errno
import hashlib
import http.client
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    NotSent, Server, binary_arg, files_under, has_command, install_sigterm, log, run_check, supported_args,
)

MIB = 1024 * 1024
FS_SIZE = 96 * MIB
RESERVE = 8 * MIB
RECOVERY_LIMIT = 10.0


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Failed(Exception):
    pass


class Test:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.mnt = os.path.join(work, "mnt")
        self.data = os.path.join(self.mnt, "data")
        self.server = None
        self.ledger = {}  # id -> {"md5": str|None, "props": {k: v}}
        self.failures = []
        self.figures = {}
        self.deleted = set()  # ids whose DELETE was acked

    # ---- helpers ----

    def check(self, ok, what):
        if ok:
            log(f"    ok: {what}")
        else:
            log(f"    FAIL: {what}")
            self.failures.append(what)
        return ok

    def api(self):
        return self.server.api

    def tmp_empty_within(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            files = files_under(os.path.join(self.data, "tmp"))
            if not files or time.monotonic() > deadline:
                return files
            time.sleep(0.1)

    def status_of(self, image_id):
        resp = self.api().get(image_id)
        return resp.json()["status"] if resp.status == 200 else f"GET {resp.status}"

    def new_image(self, name):
        resp = self.api().create(name)
        if resp.status != 201:
            raise Failed(f"create {name} answered {resp.status}: {resp.body[:200]!r}")
        image_id = resp.json()["id"]
        self.ledger[image_id] = {"md5": None, "props": {}}
        return image_id

    def headers_only(self, image_id, headers, chunked=False):
        """Sends an upload's headers and no body (a chunked one: no chunk);
        returns (status or None, seconds, error)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        start = time.monotonic()
        try:
            conn.putrequest("PUT", f"/v2/images/{image_id}/file")
            conn.putheader("Content-Type", "application/octet-stream")
            for k, v in headers.items():
                conn.putheader(k, v)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
            return resp.status, time.monotonic() - start, None
        except (OSError, http.client.HTTPException) as e:
            return None, time.monotonic() - start, f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    # ---- steps ----

    def step_a(self):
        log("a. create, upload and PATCH a few images")
        for n in range(6):
            image_id = self.new_image(f"disk-a{n}")
            data = os.urandom((n + 1) * 160 * 1024)
            resp = self.api().upload(image_id, data)
            if resp.status != 204:
                raise Failed(f"upload {image_id} answered {resp.status}: {resp.body[:200]!r}")
            self.ledger[image_id]["md5"] = hashlib.md5(data).hexdigest()
            resp = self.api().add_props(image_id, {"foo": f"bar{n}"})
            if resp.status != 200:
                raise Failed(f"PATCH {image_id} answered {resp.status}")
            self.ledger[image_id]["props"]["foo"] = f"bar{n}"
        self.check(True, f"6 images uploaded and PATCHed; free space {free_bytes(self.mnt) / MIB:.1f} MiB")

    def step_b(self):
        log("b. uploads that cannot fit are refused before their body")
        free = free_bytes(self.mnt)
        cases = [
            ("Content-Length = free + 16 MiB", {"Content-Length": str(free + 16 * MIB)}, False),
            ("Content-Length = free - reserve/2", {"Content-Length": str(free - RESERVE // 2)}, False),
            ("x-openstack-image-size = free + 16 MiB, chunked", {"x-openstack-image-size": str(free + 16 * MIB)}, True),
        ]
        for what, headers, chunked in cases:
            image_id = self.new_image("disk-b")
            status, secs, err = self.headers_only(image_id, headers, chunked)
            self.check(status == 413, f"{what}: answered {status if status else err} after {secs:.2f} s "
                                      f"with no body sent (want 413)")
            self.check(self.status_of(image_id) == "queued", f"{what}: image is {self.status_of(image_id)}")
            left = self.tmp_empty_within(2)
            self.check(not left, f"{what}: tmp/ empty ({len(left)} files)")
            self.figures.setdefault("early_413_s", []).append(round(secs, 3))

    def step_c(self):
        log("c. a chunked upload of unknown size that does not fit")
        image_id = self.new_image("disk-c")
        free_before = free_bytes(self.mnt)
        limit = free_before + 32 * MIB
        chunk = os.urandom(256 * 1024)
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=20)
        sent = 0
        how = "sent everything"
        status = None
        start = time.monotonic()
        deadline = start + 120
        try:
            conn.putrequest("PUT", f"/v2/images/{image_id}/file")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            while sent < limit and time.monotonic() < deadline:
                readable, _, _ = select.select([conn.sock], [], [], 0)
                if readable:
                    how = "server answered early"
                    break
                try:
                    conn.send(frame)
                except (BrokenPipeError, ConnectionResetError) as e:
                    how = f"send failed ({type(e).__name__})"
                    break
                except TimeoutError:
                    how = "send stalled 20 s"
                    break
                sent += len(chunk)
            else:
                if sent >= limit:
                    conn.send(b"0\r\n\r\n")
            try:
                resp = conn.getresponse()
                status = resp.status
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                how += f"; no response ({type(e).__name__})"
        except (OSError, http.client.HTTPException) as e:
            how += f"; {type(e).__name__}: {e}"
        finally:
            conn.close()
        secs = time.monotonic() - start
        self.figures["stream_413_s"] = round(secs, 3)
        self.figures["stream_sent_mib"] = round(sent / MIB, 1)
        log(f"    streamed {sent / MIB:.1f} MiB of {limit / MIB:.1f} MiB in {secs:.2f} s, {how}, status {status}")
        if status is None and "send failed" in how:
            log("    note: the connection was cut; the 413 (if any) was lost with it")
            self.check(True, "upload stopped by the server (connection cut)")
        else:
            self.check(status == 413, f"streaming upload answered {status} (want 413)")
        self.check(self.status_of(image_id) == "queued", f"image is {self.status_of(image_id)} (want queued)")
        left = self.tmp_empty_within(5)
        self.check(not left, f"tmp/ empty ({len(left)} files)")
        deadline = time.monotonic() + 5
        while free_bytes(self.mnt) < free_before - 2 * MIB and time.monotonic() < deadline:
            time.sleep(0.1)
        after = free_bytes(self.mnt)
        self.check(after >= free_before - 2 * MIB,
                   f"free space {after / MIB:.1f} MiB, before {free_before / MIB:.1f} MiB (margin 2 MiB)")

    def fill(self, path):
        """Writes path until ENOSPC, in 1 MiB then 4 KiB writes; bounded."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        written = 0
        try:
            for size, count in ((MIB, 4 * FS_SIZE // MIB), (4096, 4 * MIB // 4096)):
                buf = b"\xa5" * size
                for _ in range(count):
                    try:
                        written += os.write(fd, buf)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        finally:
            os.close(fd)
        return written

    def step_d(self):
        log("d. fill the filesystem; metadata writes until one answers 503")
        filler = os.path.join(self.mnt, "filler")
        written = self.fill(filler)
        log(f"    filler {written / MIB:.1f} MiB; free now {free_bytes(self.mnt)} bytes")
        big = "x" * 250
        statuses = {}
        got_503 = None
        open_image = None
        patches_on_open = 0
        start = time.monotonic()
        ops = 0
        for ops in range(1, 4001):
            if time.monotonic() - start > 120:
                break
            if open_image is None or patches_on_open >= 7:
                props = {f"c{j:02d}" + "k" * 200: f"{ops}-{j}-" + big[:240] for j in range(16)}
                try:
                    resp = self.api().create(f"disk-d{ops}", **props)
                except (OSError, http.client.HTTPException, NotSent) as e:
                    self.check(False, f"create #{ops} failed without an answer: {type(e).__name__}: {e}")
                    return
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 201:
                    open_image = resp.json()["id"]
                    self.ledger[open_image] = {"md5": None, "props": props}
                    patches_on_open = 0
                    continue
            else:
                props = {f"p{patches_on_open}{j:02d}" + "k" * 200: f"{ops}-{j}-" + big[:240] for j in range(16)}
                try:
                    resp = self.api().add_props(open_image, props)
                except (OSError, http.client.HTTPException, NotSent) as e:
                    self.check(False, f"PATCH #{ops} failed without an answer: {type(e).__name__}: {e}")
                    return
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    self.ledger[open_image]["props"].update(props)
                    patches_on_open += 1
                    continue
            if resp.status == 503:
                got_503 = resp
                break
            self.check(False, f"write #{ops} answered {resp.status}: {resp.body[:200]!r}")
            if resp.status >= 500:
                break
        secs = time.monotonic() - start
        self.figures["writes_until_503"] = ops
        self.figures["seconds_until_503"] = round(secs, 2)
        log(f"    {ops} writes in {secs:.2f} s, answers {statuses}")
        self.check(500 not in statuses, f"no write answered 500 ({statuses.get(500, 0)} did)")
        if self.check(got_503 is not None, "a write answered 503 once the database could not grow"):
            self.check("retry-after" in got_503.headers,
                       f"the 503 has Retry-After ({got_503.headers.get('retry-after')!r})")
        # Checked whatever the writes answered: the disk is full either way.
        health = self.api().healthcheck()
        self.check(health.status == 503, f"/healthcheck answers {health.status} while writes fail (want 503)")
        listing = self.api().call("GET", "/v2/images?limit=5")
        self.check(listing.status == 200, f"GET /v2/images?limit=5 answers {listing.status}")
        some = next(i for i, v in self.ledger.items() if v["md5"])
        dl = self.api().download(some)
        self.check(dl.status == 200 and hashlib.md5(dl.body).hexdigest() == self.ledger[some]["md5"],
                   f"download of an earlier image answers {dl.status} with the right bytes")
        # An upload now: no room even for the reserve.
        image_up = next((i for i, v in self.ledger.items() if v["md5"] is None), None)
        up = self.api().upload(image_up, os.urandom(64 * 1024))
        self.check(up.status in (413, 503), f"a 64 KiB upload answers {up.status} (want 413 or 503)")
        if up.status == 204:
            self.ledger[image_up]["md5"] = "unknown"
        again = self.api().create("disk-d-again")
        self.check(again.status == 503, f"another create answers {again.status} (want 503)")
        if again.status == 503:
            self.check("retry-after" in again.headers, "that 503 has Retry-After too")
        victim = next((i for i, v in self.ledger.items() if v["md5"] is None and i != image_up), None)
        gone = self.api().delete(victim)
        self.check(gone.status in (204, 503), f"a DELETE answers {gone.status} (want 503, or 204 if it fit)")
        if gone.status == 204:
            del self.ledger[victim]
            self.deleted.add(victim)
        if again.status == 201:
            self.ledger[again.json()["id"]] = {"md5": None, "props": {}}
        self.figures["filler"] = filler

    def step_e(self):
        log("e. free the space; writes come back without a restart")
        filler = self.figures.pop("filler", os.path.join(self.mnt, "filler"))
        if os.path.exists(filler):
            os.unlink(filler)
        os.sync()
        start = time.monotonic()
        recovered = None
        attempts = 0
        last = None
        errors_500 = 0
        while time.monotonic() - start < 30 and attempts < 300:
            attempts += 1
            try:
                health = self.api().healthcheck()
                if health.status == 200:
                    resp = self.api().create("disk-e")
                    last = resp.status
                    if resp.status == 201:
                        self.ledger[resp.json()["id"]] = {"md5": None, "props": {}}
                        recovered = time.monotonic() - start
                        break
                    if resp.status == 500:
                        errors_500 += 1
                else:
                    last = f"healthcheck {health.status}"
            except (OSError, http.client.HTTPException, NotSent) as e:
                last = f"{type(e).__name__}"
            time.sleep(0.2)
        self.figures["recovery_s"] = round(recovered, 3) if recovered is not None else None
        self.check(errors_500 == 0, f"{errors_500} creates answered 500 during recovery ({attempts} attempts)")
        self.check(recovered is not None and recovered <= RECOVERY_LIMIT,
                   f"recovered in {recovered if recovered is None else round(recovered, 2)} s "
                   f"(limit {RECOVERY_LIMIT} s; last answer {last})")
        if recovered is not None:
            image_id = self.new_image("disk-e-upload")
            data = os.urandom(300 * 1024)
            resp = self.api().upload(image_id, data)
            if self.check(resp.status == 204, f"an upload after recovery answers {resp.status}"):
                self.ledger[image_id]["md5"] = hashlib.md5(data).hexdigest()

    def step_f(self):
        log("f. restart; every acked write is there; offline check")
        rc = self.server.stop()
        self.check(rc == 0, f"server exited {rc} on SIGTERM")
        start_s = self.server.start()
        self.figures["restart_s"] = round(start_s, 3)
        missing = []
        wrong = []
        for image_id, want in self.ledger.items():
            resp = self.api().get(image_id)
            if resp.status != 200:
                missing.append(f"{image_id} ({resp.status})")
                continue
            doc = resp.json()
            if want["md5"] and want["md5"] != "unknown":
                if doc["status"] != "active" or doc.get("checksum") != want["md5"]:
                    wrong.append(f"{image_id}: status {doc['status']}, checksum {doc.get('checksum')}")
                    continue
                dl = self.api().download(image_id)
                if dl.status != 200 or hashlib.md5(dl.body).hexdigest() != want["md5"]:
                    wrong.append(f"{image_id}: download {dl.status} md5 {hashlib.md5(dl.body).hexdigest()}")
            bad = [k for k, v in want["props"].items() if doc.get(k) != v]
            if bad:
                wrong.append(f"{image_id}: {len(bad)} acked properties missing or changed")
        back = [i for i in self.deleted if self.api().get(i).status != 404]
        self.check(not back, f"acked deletes stay deleted ({back})")
        self.check(not missing, f"all {len(self.ledger)} acked images exist after restart; missing: {missing[:5]}")
        self.check(not wrong, f"acked uploads and properties intact; wrong: {wrong[:5]}")
        saving = [d["id"] for d in self.api().list_all() if d["status"] == "saving"]
        self.check(not saving, f"no image saving ({saving[:3]})")
        self.server.stop()
        if has_command(self.binary, "check"):
            rc, out, secs = run_check(self.binary, self.data)
            self.figures["check_s"] = round(secs, 3)
            self.check(rc == 0, f"`check` exited {rc} in {secs:.2f} s: {out[:500]}")
        else:
            self.check(False, "the binary has no `check` command")


def mount_fs(work):
    """Makes and mounts the ext4; returns None or the reason it could not."""
    if os.geteuid() != 0:
        return "not root (mounting a loop filesystem needs root)"
    if not shutil.which("mkfs.ext4"):
        return "mkfs.ext4 not found"
    image = os.path.join(work, "fs.img")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(FS_SIZE)
    out = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return f"mkfs.ext4 failed: {out.stderr.strip()}"
    out = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return f"mount -o loop refused: {out.stderr.strip()}"
    return None


def unmount(mnt):
    for _ in range(10):
        if not os.path.ismount(mnt):
            return
        out = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return
        time.sleep(0.5)
    log(f"warning: umount {mnt} kept failing; detaching it lazily")
    subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    args = parser.parse_args()
    binary = binary_arg(args)
    install_sigterm()
    work = tempfile.mkdtemp(prefix="ocellus-fulldisk-")
    test = None
    try:
        reason = mount_fs(work)
        if reason:
            print(f"SKIP: {reason}", flush=True)
            return 0
        test = Test(binary, work)
        extra = supported_args(binary, [("--min-free-space", RESERVE)])
        test.server = Server(binary, test.data, os.path.join(work, "server.log"), extra)
        test.server.start()
        log(f"full_disk: {binary}, {FS_SIZE // MIB} MiB ext4 at {test.mnt}, reserve {RESERVE // MIB} MiB, "
            f"free {free_bytes(test.mnt) / MIB:.1f} MiB")
        for step in (test.step_a, test.step_b, test.step_c, test.step_d, test.step_e, test.step_f):
            try:
                step()
            except Failed as e:
                test.check(False, str(e))
                break
            except (OSError, http.client.HTTPException, NotSent, RuntimeError, ValueError, KeyError) as e:
                test.check(False, f"{step.__name__}: {type(e).__name__}: {e}")
                break
    finally:
        if test and test.server:
            test.server.stop()
            if test.failures:
                log("---- server log (tail) ----\n" + test.server.log_tail(40) + "\n---- end ----")
        unmount(os.path.join(work, "mnt"))
        shutil.rmtree(work, ignore_errors=True)
    figs = {k: v for k, v in test.figures.items() if k != "filler"}
    log(f"figures: {figs}")
    if test.failures:
        log(f"FAILED: {len(test.failures)} checks failed")
        return 1
    log("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
