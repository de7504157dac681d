#!/usr/bin/env python3
"""Crash loop: kill -9 the server while writes are in flight, many times, and
check after each crash that nothing acknowledged was lost and the store is
consistent.

Usage: crash_loop.py BINARY [--cycles N] [--seed S] [--keep]

Each cycle starts the server on the same data directory, runs 4 writer
threads (creates, uploads of 1 KiB-3 MiB with 30 % reused content, PATCHes,
deletes) for a random 0.3-2 s, then SIGKILLs the server with requests in
flight. Then `BINARY check --data-dir DIR` must exit 0 (skipped with a note if
the binary has no `check` command), the server is restarted and the state is
compared with the client's ledger:

- an operation is *acked* only when its whole 2xx response was read; one cut
  by the kill is *unknown* (either outcome is accepted, and the observed one
  becomes the ledger's truth for later cycles); a refused connection means the
  server never saw the request;
- every acked create exists unless its delete was acked or is unknown; every
  acked delete is gone and stays gone in every later cycle; every acked
  upload's image is active with the acked checksum, os_hash_value and size,
  and its download (new ones, plus a sample of older ones) has the right
  md5 and sha512; every PATCHed value is the last acked one or the unknown
  one after it; images from unknown creates may exist (queued, by their name);
- no image is `saving`; `tmp/` is empty after start; the files under
  `blobs/` are as many as the distinct sha512 values of active images, and each
  blob of more than 16 KiB has its outboard beside it.

Each writer owns its images (ownership is fixed by thread), so the operations
on one image are sequential and the kill cuts at most the last of them.
Cycles: --cycles, else $OCELLUS_CRASH_CYCLES, else 20. The seed (printed)
fixes the choices, sizes and kill delays; the timing of the kill relative to
the requests is the machine's, so a replay is close but not identical.
"""

import argparse
import hashlib
import http.client
import os
import random
import shutil
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import NotSent, Server, binary_arg, files_under, has_command, install_sigterm, log, run_check  # noqa: E402

WRITERS = 4
KIB = 1024
MIB = 1024 * 1024


class Img:
    def __init__(self, image_id, name, owner):
        self.id = image_id
        self.name = name
        self.owner = owner
        self.upload = None          # (md5, sha512, size) once known uploaded
        self.pending_upload = None  # (md5, sha512, size) of an unknown upload
        self.props = {}             # key -> value, known
        self.pending_props = {}     # key -> value of an unknown PATCH
        self.pending_delete = False
        self.needs_download = False


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.images = {}            # id -> Img (live as far as the client knows)
        self.gone = set()           # ids whose delete was acked or observed
        self.unknown_creates = {}   # name -> owner, creates whose outcome is unknown
        self.contents = []          # (data, md5, sha512) acked uploads, for dedupe reuse
        self.acked = 0
        self.unknown = 0
        self.not_sent = 0
        self.errors = []

    def mine(self, owner):
        with self.lock:
            return [i for i in self.images.values() if i.owner == owner]


def digest(data):
    return hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest(), len(data)


class Writer(threading.Thread):
    def __init__(self, index, api, ledger, rng, stop, name_prefix, counter):
        super().__init__(name=f"writer-{index}", daemon=True)
        self.index = index
        self.api = api
        self.ledger = ledger
        self.rng = rng
        self.stop = stop
        self.prefix = name_prefix
        self.counter = counter

    def next_name(self):
        with self.ledger.lock:
            self.counter[0] += 1
            return f"{self.prefix}-{self.counter[0]}"

    def run(self):
        # Bounded: the main thread sets stop right after the kill, and every
        # request has a timeout; a failed request ends the thread.
        while not self.stop.is_set():
            try:
                if not self.one_op():
                    return
            except Exception as e:  # noqa: BLE001 - recorded, ends this writer
                with self.ledger.lock:
                    self.ledger.errors.append(f"{self.name}: unexpected {type(e).__name__}: {e}")
                return

    def fail(self, what, resp):
        with self.ledger.lock:
            self.ledger.errors.append(f"{self.name}: {what} answered {resp.status}: {resp.body[:300]!r}")

    def one_op(self):
        """Runs one operation; False when this writer should stop."""
        rng = self.rng
        mine = self.ledger.mine(self.index)
        queued = [i for i in mine if i.upload is None]
        roll = rng.random()
        if roll < 0.25 or not mine:
            return self.op_create()
        if roll < 0.60:
            if not queued:
                return self.op_create()
            return self.op_upload(rng.choice(queued))
        if roll < 0.85:
            return self.op_patch(rng.choice(mine))
        return self.op_delete(rng.choice(mine))

    def attempt(self, fn, on_unknown):
        """Calls fn(); returns its Response, or None after recording a refused
        (not sent) or cut (unknown) request."""
        try:
            return fn()
        except NotSent:
            with self.ledger.lock:
                self.ledger.not_sent += 1
            return None
        except (OSError, http.client.HTTPException):
            with self.ledger.lock:
                self.ledger.unknown += 1
                on_unknown()
            return None

    def op_create(self):
        name = self.next_name()
        resp = self.attempt(lambda: self.api.create(name),
                            lambda: self.ledger.unknown_creates.__setitem__(name, self.index))
        if resp is None:
            return False
        if resp.status != 201:
            self.fail(f"create {name}", resp)
            return False
        image_id = resp.json()["id"]
        with self.ledger.lock:
            self.ledger.acked += 1
            self.ledger.images[image_id] = Img(image_id, name, self.index)
        return True

    def op_upload(self, img):
        rng = self.rng
        with self.ledger.lock:
            pool = list(self.ledger.contents)
        if pool and rng.random() < 0.30:
            data, md5, sha = rng.choice(pool)
        else:
            size = rng.randint(1 * KIB, 3 * MIB)
            data = bytearray(rng.randbytes(size))
            # Random bytes end the first sector with the MBR signature (55 AA) once in 65,536
            # uploads, and the format inspector then rightly refuses them as a broken MBR disk
            # claimed to be raw: this run's uploads are plain data, never that.
            data[510:512] = b"\0\0"
            data = bytes(data)
            md5, sha, _ = digest(data)
        expect = (md5, sha, len(data))

        def unknown():
            img.pending_upload = expect
        resp = self.attempt(lambda: self.api.upload(img.id, data, timeout=30), unknown)
        if resp is None:
            return False
        if resp.status != 204:
            self.fail(f"upload {img.id}", resp)
            return False
        with self.ledger.lock:
            self.ledger.acked += 1
            img.upload = expect
            img.needs_download = True
            if len(self.ledger.contents) < 24:
                self.ledger.contents.append((data, md5, sha))
            else:
                self.ledger.contents[rng.randrange(24)] = (data, md5, sha)
        return True

    def op_patch(self, img):
        key = f"k{self.rng.randint(0, 3)}"
        with self.ledger.lock:
            self.counter[0] += 1
            value = f"v{self.counter[0]}"
        resp = self.attempt(lambda: self.api.add_props(img.id, {key: value}),
                            lambda: img.pending_props.__setitem__(key, value))
        if resp is None:
            return False
        if resp.status != 200:
            self.fail(f"PATCH {img.id}", resp)
            return False
        with self.ledger.lock:
            self.ledger.acked += 1
            img.props[key] = value
        return True

    def op_delete(self, img):
        def unknown():
            img.pending_delete = True
        resp = self.attempt(lambda: self.api.delete(img.id), unknown)
        if resp is None:
            return False
        if resp.status != 204:
            self.fail(f"DELETE {img.id}", resp)
            return False
        with self.ledger.lock:
            self.ledger.acked += 1
            del self.ledger.images[img.id]
            self.ledger.gone.add(img.id)
        return True


def verify(server, data_dir, ledger, rng, prefix):
    """Compares the restarted server with the ledger; resolves unknowns to the
    observed outcome. Returns a list of problems and some figures."""
    problems = []
    api = server.api
    tmp_files = files_under(os.path.join(data_dir, "tmp"))
    if tmp_files:
        problems.append(f"tmp/ is not empty after start: {tmp_files[:5]}")
    listed = {doc["id"]: doc for doc in api.list_all()}
    saving = [i for i, d in listed.items() if d["status"] == "saving"]
    if saving:
        problems.append(f"images in 'saving' after restart: {saving[:5]}")

    for image_id in ledger.gone:
        if image_id in listed:
            problems.append(f"deleted image {image_id} is back (status {listed[image_id]['status']})")

    to_download = []
    for img in list(ledger.images.values()):
        doc = listed.get(img.id)
        if doc is None:
            if img.pending_delete:
                del ledger.images[img.id]
                ledger.gone.add(img.id)
                continue
            resp = api.get(img.id)
            problems.append(f"acked image {img.id} ({img.name}) is missing (GET answered {resp.status})")
            del ledger.images[img.id]
            continue
        img.pending_delete = False
        status = doc["status"]
        got = (doc.get("checksum"), doc.get("os_hash_value"), doc.get("size"))
        if img.upload is not None:
            if status != "active" or got != img.upload:
                problems.append(f"image {img.id}: acked upload {img.upload[0]}/{img.upload[2]} B but "
                                f"status {status}, checksum {got[0]}, size {got[2]}")
        elif img.pending_upload is not None:
            if status == "active" and got == img.pending_upload:
                img.upload = img.pending_upload
                img.needs_download = True
            elif status != "queued":
                problems.append(f"image {img.id}: unknown upload {img.pending_upload[0]} but status "
                                f"{status}, checksum {got[0]}")
        elif status != "queued":
            problems.append(f"image {img.id}: never uploaded but status {status}, checksum {got[0]}")
        img.pending_upload = None
        if img.upload is not None and status == "active":
            if img.needs_download:
                to_download.append(img)
        for key in set(img.props) | set(img.pending_props):
            allowed = {img.props.get(key)}
            if key in img.pending_props:
                allowed.add(img.pending_props[key])
            seen = doc.get(key)
            if seen not in allowed:
                problems.append(f"image {img.id}: property {key} is {seen!r}, expected one of {sorted(map(str, allowed))}")
            if seen is None:
                img.props.pop(key, None)
            else:
                img.props[key] = seen
        img.pending_props = {}

    # Images the ledger does not know must come from creates cut by a kill.
    known = set(ledger.images) | ledger.gone
    adopted = 0
    for image_id, doc in listed.items():
        if image_id in known:
            continue
        name = doc.get("name")
        if name in ledger.unknown_creates and doc["status"] == "queued":
            owner = ledger.unknown_creates.pop(name)
            ledger.images[image_id] = Img(image_id, name, owner)
            adopted += 1
        elif name and name.startswith(prefix):
            problems.append(f"unexpected image {image_id} ({name}, {doc['status']})")

    # Downloads: every newly uploaded image, plus a sample of older ones.
    older = [i for i in ledger.images.values() if i.upload is not None and not i.needs_download]
    sample = rng.sample(older, min(3, len(older)))
    downloaded = 0
    for img in to_download + sample:
        try:
            resp = api.download(img.id)
        except (OSError, http.client.HTTPException) as e:
            problems.append(f"download {img.id} broke off: {type(e).__name__}: {e}")
            continue
        if resp.status != 200:
            problems.append(f"download {img.id} answered {resp.status}")
            continue
        got = digest(resp.body)
        if got != img.upload:
            problems.append(f"download {img.id}: md5 {got[0]} sha512 {got[1][:16]}… {got[2]} B, "
                            f"expected {img.upload[0]} {img.upload[1][:16]}… {img.upload[2]} B")
        img.needs_download = False
        downloaded += 1

    listed = {doc["id"]: doc for doc in api.list_all()}
    distinct = {d["os_hash_value"] for d in listed.values() if d["status"] == "active"}
    files = files_under(os.path.join(data_dir, "blobs"))
    blobs = [path for path in files if not path.endswith(".obao")]
    if len(blobs) != len(distinct):
        problems.append(f"{len(blobs)} files under blobs/ but {len(distinct)} distinct contents among active images")
    # An outboard is placed before its blob, so every blob of more than one 16 KiB group has
    # one (an outboard without its blob may stay after a crash between the two renames).
    for blob in blobs:
        if os.path.getsize(blob) > 16384 and blob + ".obao" not in files:
            problems.append(f"{blob} has no outboard")
    return problems, {"images": len(listed), "blobs": len(blobs), "downloaded": downloaded, "adopted": adopted}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory when a cycle fails")
    args = parser.parse_args()
    binary = binary_arg(args)
    install_sigterm()
    cycles = args.cycles or int(os.environ.get("OCELLUS_CRASH_CYCLES") or 20)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    log(f"crash_loop: binary {binary}, cycles {cycles}, seed {seed} (replay with --seed {seed})")
    rng = random.Random(seed)
    can_check = has_command(binary, "check")
    if not can_check:
        log(f"note: {binary} has no `check` command; the offline check after each kill is skipped")

    work = tempfile.mkdtemp(prefix="ocellus-crash-")
    data_dir = os.path.join(work, "data")
    server = Server(binary, data_dir, os.path.join(work, "server.log"))
    ledger = Ledger()
    counter = [0]
    prefix = f"crash-{seed}"
    check_times = []
    failed = False
    started = time.monotonic()
    try:
        for cycle in range(1, cycles + 1):
            start_s = server.start()
            tmp_files = files_under(os.path.join(data_dir, "tmp"))
            if cycle > 1:
                problems, figs = verify(server, data_dir, ledger, rng, prefix)
                if problems:
                    failed = True
                    log(f"FAIL: cycle {cycle} verification after the kill of cycle {cycle - 1}:")
                    for p in problems[:40]:
                        log(f"    {p}")
                    break
            else:
                figs = {"images": 0, "blobs": 0, "downloaded": 0, "adopted": 0}
            if tmp_files:
                failed = True
                log(f"FAIL: tmp/ not empty right after start: {tmp_files[:5]}")
                break
            before = (ledger.acked, ledger.unknown)
            stop = threading.Event()
            writers = [Writer(t, server.api, ledger, random.Random(rng.getrandbits(64)), stop, prefix, counter)
                       for t in range(WRITERS)]
            for w in writers:
                w.start()
            run_for = rng.uniform(0.3, 2.0)
            time.sleep(run_for)
            server.kill9()
            stop.set()
            for w in writers:
                w.join(timeout=60)
                if w.is_alive():
                    ledger.errors.append(f"{w.name} still running 60 s after the kill")
            if ledger.errors:
                failed = True
                log(f"FAIL: cycle {cycle}: requests failed before the kill:")
                for e in ledger.errors[:20]:
                    log(f"    {e}")
                break
            check_note = "check skipped"
            if can_check:
                rc, out, secs = run_check(binary, data_dir)
                check_times.append(secs)
                check_note = f"check {secs:.2f} s"
                if rc != 0:
                    failed = True
                    log(f"FAIL: cycle {cycle}: `check` exited {rc} after the kill:\n    "
                        + out.replace("\n", "\n    "))
                    break
            log(f"cycle {cycle:3}: start {start_s:.2f} s, verified {figs['images']} images / {figs['blobs']} blobs "
                f"({figs['downloaded']} downloads, {figs['adopted']} adopted), ran {run_for:.2f} s: "
                f"+{ledger.acked - before[0]} acked, +{ledger.unknown - before[1]} unknown; {check_note}")
        else:
            # The last kill is verified too.
            server.start()
            problems, figs = verify(server, data_dir, ledger, rng, prefix)
            if problems:
                failed = True
                log(f"FAIL: final verification after the kill of cycle {cycles}:")
                for p in problems[:40]:
                    log(f"    {p}")
            else:
                log(f"final: verified {figs['images']} images / {figs['blobs']} blobs ({figs['downloaded']} downloads)")
            # A clean stop must leave a store `check` accepts, whatever it
            # makes of the state a kill leaves behind.
            rc = server.stop()
            if rc != 0:
                failed = True
                log(f"FAIL: the server exited {rc} on SIGTERM")
            if can_check:
                rc, out, secs = run_check(binary, data_dir)
                check_times.append(secs)
                if rc != 0:
                    failed = True
                    log(f"FAIL: `check` exited {rc} after a clean stop:\n    " + out.replace("\n", "\n    "))
                else:
                    log(f"final: `check` after a clean stop passed in {secs:.2f} s")
    except Exception as e:  # noqa: BLE001 - reported as a failure with the server log
        failed = True
        log(f"FAIL: {type(e).__name__}: {e}")
    finally:
        server.stop()
        if failed:
            log("---- server log (tail) ----\n" + server.log_tail(60) + "\n---- end ----")
        if failed and args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    total = time.monotonic() - started
    check_txt = (f"check total {sum(check_times):.2f} s, max {max(check_times):.2f} s" if check_times
                 else "check not run")
    log(f"totals: seed {seed}, cycles {cycles}, ops acked {ledger.acked}, ops unknown {ledger.unknown}, "
        f"refused {ledger.not_sent}, live images {len(ledger.images)}, deleted {len(ledger.gone)}, "
        f"{check_txt}, wall {total:.1f} s")
    log("FAILED" if failed else "PASSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
