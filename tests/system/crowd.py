#!/usr/bin/env python3
"""Crowd: metadata latency while hundreds of slow transfers are held open.

Usage: crowd.py BINARY [--uploads 300] [--downloads 600] [--seconds 20]
                [--p99-limit-ms 100] [--max-threads 64] [--finish 30] [--keepalive]

Raises RLIMIT_NOFILE (soft to hard), starts the server with --max-uploads and
--max-downloads at the crowd sizes and --max-connections above the total
(flags the binary does not document are left out, with a note), and prepares
one image of 8 MiB random data and one queued image per upload.

Then, from one asyncio loop with raw streams:
- each upload sends its headers (Content-Length: 4 MiB) and then 1 KiB about
  every 0.5 s;
- each download (SO_RCVBUF 4 KiB, so the kernel cannot soak up the image)
  reads 1 KiB about every 0.5 s.
While all are held, a measuring client in its own thread sends
`GET /v2/images?limit=5` and `GET /v2/images/{id}` alternately, back to back,
each on a new connection (--keepalive: one persistent connection), for
--seconds, with a 10 s timeout (a timeout or non-200 is a failure). The
server's `Threads:` (/proc/<pid>/status) is sampled every second.

At the end, --finish uploads send the rest of their 4 MiB at full speed; each
must answer 204 and the image's checksum must be the md5 of what was sent.
The other connections are closed.

Passes when there is no failure, p99 <= --p99-limit-ms, the thread count
stays <= --max-threads, no held transfer was refused, and every finished
upload is correct. The last line printed is one JSON object with the figures
(for bench/).
"""

import argparse
import asyncio
import hashlib
import http.client
import json
import math
import os
import random
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Server, binary_arg, install_sigterm, log, supported_args  # noqa: E402

MIB = 1024 * 1024
UPLOAD_SIZE = 4 * MIB
DOWNLOAD_SIZE = 8 * MIB
TICK = 0.5
PIECE = 1024
REQUEST_TIMEOUT = 10.0


class Figures:
    def __init__(self):
        self.latencies = []
        self.failures = []
        self.threads = []
        self.uploads_held = 0
        self.downloads_held = 0
        self.refused = []          # transfers answered (or cut) while they should be held
        self.download_bytes = 0
        self.downloads_started = 0  # got "HTTP/1.1 200" and its first bytes
        self.phase = "prepare"       # prepare, open, window, finish: for the thread samples
        self.threads_by_phase = {}


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def thread_count(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class UploadContent:
    """Upload i's 4 MiB: a unique 64-byte prefix, then shared random bytes."""

    def __init__(self):
        self.base = os.urandom(UPLOAD_SIZE)

    def prefix(self, i):
        return (f"crowd-upload-{i:06d}-".encode() * 4)[:64]

    def piece(self, i, offset, length):
        end = min(offset + length, UPLOAD_SIZE)
        if offset >= 64:
            return self.base[offset:end]
        return (self.prefix(i) + self.base[64:end])[offset:end] if end > 64 else self.prefix(i)[offset:end]

    def md5(self, i):
        h = hashlib.md5(self.prefix(i))
        h.update(memoryview(self.base)[64:])
        return h.hexdigest()


async def read_response(reader):
    """Reads one HTTP/1.1 response (status line, headers, Content-Length body)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


class Upload:
    def __init__(self, index, image_id):
        self.index = index
        self.image_id = image_id
        self.reader = None
        self.writer = None
        self.sent = 0
        self.response = None  # task reading the server's answer
        self.error = None
        self.finishing = False  # set when finish_upload takes over the connection


class Crowd:
    def __init__(self, port, args, content, figures, download_id):
        self.port = port
        self.args = args
        self.content = content
        self.fig = figures
        self.download_id = download_id
        self.holding = True
        self.connect_gate = asyncio.Semaphore(64)

    async def connect(self, rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        async with self.connect_gate:
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port)),
                                       REQUEST_TIMEOUT)
            except BaseException:
                sock.close()
                raise
        return await asyncio.open_connection(sock=sock, limit=16 * 1024)

    async def hold_upload(self, up):
        try:
            up.reader, up.writer = await self.connect()
            up.writer.write((f"PUT /v2/images/{up.image_id}/file HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                             f"Content-Type: application/octet-stream\r\nContent-Length: {UPLOAD_SIZE}\r\n\r\n"
                             ).encode())
            up.response = asyncio.create_task(read_response(up.reader))
            self.fig.uploads_held += 1
            await asyncio.sleep(random.uniform(0, TICK))
            while self.holding and up.sent < UPLOAD_SIZE - PIECE:
                if up.finishing:
                    return
                if up.response.done():
                    self.fig.refused.append(f"upload {up.index}: {self.describe(up.response)} while held")
                    return
                up.writer.write(self.content.piece(up.index, up.sent, PIECE))
                up.sent += PIECE
                await asyncio.wait_for(up.writer.drain(), REQUEST_TIMEOUT)
                await asyncio.sleep(TICK * random.uniform(0.8, 1.2))
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            if up.finishing:
                return
            up.error = f"{type(e).__name__}: {e}"
            self.fig.refused.append(f"upload {up.index}: {up.error}")

    @staticmethod
    def describe(task):
        if task.cancelled():
            return "cancelled"
        if task.exception():
            return f"{type(task.exception()).__name__}"
        return f"answered {task.result()[0]}"

    async def hold_download(self, index):
        writer = None
        try:
            reader, writer = await self.connect(rcvbuf=4096)
            writer.write(f"GET /v2/images/{self.download_id}/file HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n"
                         .encode())
            await writer.drain()
            self.fig.downloads_held += 1
            first = b""
            await asyncio.sleep(random.uniform(0, TICK))
            while self.holding:
                try:
                    data = await asyncio.wait_for(reader.read(PIECE), 0.05)
                except asyncio.TimeoutError:
                    data = None
                if data == b"":
                    self.fig.refused.append(f"download {index}: connection closed after "
                                            f"{len(first)} bytes ({first[:15]!r})")
                    return
                if data:
                    self.fig.download_bytes += len(data)
                    if len(first) < 16:
                        first += data
                        if len(first) >= 12:
                            if not first.startswith(b"HTTP/1.1 200"):
                                self.fig.refused.append(f"download {index}: {first[:12]!r}")
                                return
                            self.fig.downloads_started += 1
                await asyncio.sleep(TICK * random.uniform(0.8, 1.2))
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            self.fig.refused.append(f"download {index}: {type(e).__name__}: {e}")
        finally:
            if writer:
                writer.close()

    async def finish_upload(self, up):
        """Sends the rest at full speed; returns (ok, detail)."""
        up.finishing = True
        try:
            # The holding task writes nothing once it sees `finishing`; a
            # write of its own may still be draining, which is harmless: its
            # bytes were counted in up.sent before this runs.
            offset = up.sent
            while offset < UPLOAD_SIZE:
                piece = self.content.piece(up.index, offset, 256 * 1024)
                up.writer.write(piece)
                offset += len(piece)
                await asyncio.wait_for(up.writer.drain(), 60)
            status, body = await asyncio.wait_for(up.response, 60)
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            return False, f"upload {up.index}: {type(e).__name__}: {e}"
        if status != 204:
            return False, f"upload {up.index}: answered {status}: {body[:200]!r}"
        return True, None


def measure(port, ids, seconds, keepalive, fig, done):
    """Back-to-back metadata requests for `seconds`; each latency recorded."""
    paths = ["/v2/images?limit=5"] + [f"/v2/images/{i}" for i in ids]
    conn = None
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        path = paths[0] if n % 2 == 0 else paths[1 + (n // 2) % (len(paths) - 1)]
        n += 1
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - start
            fig.latencies.append(elapsed)
            if resp.status != 200:
                fig.failures.append(f"GET {path} answered {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            elapsed = time.perf_counter() - start
            fig.latencies.append(elapsed)
            fig.failures.append(f"GET {path}: {type(e).__name__}: {e} after {elapsed:.1f} s")
            if conn:
                conn.close()
            conn = None
        if not keepalive and conn is not None:
            conn.close()
            conn = None
    if conn:
        conn.close()
    done.set()


def sample_threads(pid, fig, stop):
    for _ in range(100000):
        n = thread_count(pid)
        if n is not None:
            fig.threads.append(n)
            fig.threads_by_phase[fig.phase] = max(n, fig.threads_by_phase.get(fig.phase, 0))
        if stop.wait(1.0):
            return


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def run_crowd(server, args, fig, upload_ids, download_id, content):
    crowd = Crowd(server.port, args, content, fig, download_id)
    uploads = [Upload(i, image_id) for i, image_id in enumerate(upload_ids)]
    open_start = time.monotonic()
    fig.phase = "open"
    tasks = [asyncio.create_task(crowd.hold_upload(u)) for u in uploads]
    tasks += [asyncio.create_task(crowd.hold_download(i)) for i in range(args.downloads)]
    # All held connections are open once every connect finished (bounded).
    for _ in range(int(60 / 0.1)):
        if fig.uploads_held + fig.downloads_held + len(fig.refused) >= len(tasks):
            break
        await asyncio.sleep(0.1)
    opened = time.monotonic() - open_start
    log(f"held: {fig.uploads_held} uploads, {fig.downloads_held} downloads open after {opened:.1f} s "
        f"({len(fig.refused)} refused)")
    await asyncio.sleep(1.0)

    done = threading.Event()
    fig.phase = "window"
    ids = upload_ids[:20] + [download_id]
    measurer = threading.Thread(target=measure, args=(server.port, ids, args.seconds, args.keepalive, fig, done),
                                daemon=True)
    measurer.start()
    while not done.is_set():
        await asyncio.sleep(0.2)
    measurer.join(timeout=REQUEST_TIMEOUT + 5)

    fig.phase = "finish"
    # Finishers: the first --finish uploads still held.
    finishers = [u for u in uploads if u.writer and not u.error and u.response and not u.response.done()]
    finishers = finishers[: args.finish]
    results = await asyncio.gather(*(crowd.finish_upload(u) for u in finishers))
    crowd.holding = False
    finished_ok = []
    problems = []
    for up, (ok, detail) in zip(finishers, results):
        if ok:
            finished_ok.append(up)
        else:
            problems.append(detail)
    for up in uploads:
        if up.response and not up.response.done():
            up.response.cancel()
        if up.writer:
            up.writer.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return finishers, finished_ok, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--downloads", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--finish", type=int, default=30)
    parser.add_argument("--p99-limit-ms", type=float, default=100)
    parser.add_argument("--max-threads", type=int, default=64)
    parser.add_argument("--keepalive", action="store_true", help="measure on one persistent connection")
    args = parser.parse_args()
    binary = binary_arg(args)
    install_sigterm()
    nofile = raise_nofile()
    need = args.uploads + args.downloads + 200
    if nofile < need:
        log(f"error: RLIMIT_NOFILE is {nofile}, need about {need}")
        return 2
    log(f"crowd: {binary}, {args.uploads} slow uploads, {args.downloads} slow downloads, {args.seconds} s window, "
        f"metadata requests on {'one keep-alive connection' if args.keepalive else 'a new connection each'}; "
        f"RLIMIT_NOFILE {nofile}")

    work = tempfile.mkdtemp(prefix="ocellus-crowd-")
    extra = supported_args(binary, [
        ("--max-uploads", max(args.uploads, 1)),
        ("--max-downloads", max(args.downloads, 1)),
        ("--max-connections", args.uploads + args.downloads + 64),
    ])
    server = Server(binary, os.path.join(work, "data"), os.path.join(work, "server.log"), extra)
    fig = Figures()
    stop_sampler = threading.Event()
    finishers, finished_ok, problems, wrong = [], [], [], []
    failed_setup = None
    try:
        server.start()
        sampler = threading.Thread(target=sample_threads, args=(server.pid, fig, stop_sampler), daemon=True)
        sampler.start()
        api = server.api
        data = os.urandom(DOWNLOAD_SIZE)
        resp = api.create("crowd-download")
        download_id = resp.json()["id"]
        resp = api.upload(download_id, data, timeout=60)
        if resp.status != 204:
            raise RuntimeError(f"upload of the download image answered {resp.status}")
        download_md5 = hashlib.md5(data).hexdigest()
        if api.get(download_id).json().get("checksum") != download_md5:
            raise RuntimeError("the download image's checksum is not the md5 of its data")
        upload_ids = []
        for i in range(args.uploads):
            resp = api.create(f"crowd-upload-{i}")
            if resp.status != 201:
                raise RuntimeError(f"create {i} answered {resp.status}")
            upload_ids.append(resp.json()["id"])
        log(f"prepared: download image {download_id} (md5 {download_md5}), {len(upload_ids)} queued images; "
            f"server threads {thread_count(server.pid)}")
        content = UploadContent()
        finishers, finished_ok, problems = asyncio.run(run_crowd(server, args, fig, upload_ids, download_id,
                                                                 content))
        for up in finished_ok:
            doc = api.get(up.image_id).json()
            want = content.md5(up.index)
            if doc.get("status") != "active" or doc.get("checksum") != want:
                wrong.append(f"upload {up.index}: status {doc.get('status')}, checksum {doc.get('checksum')}, "
                             f"sent md5 {want}")
    except (OSError, RuntimeError, http.client.HTTPException, asyncio.TimeoutError) as e:
        failed_setup = f"{type(e).__name__}: {e}"
    finally:
        stop_sampler.set()
        server.stop()
        log_tail = server.log_tail(15)
        shutil.rmtree(work, ignore_errors=True)

    lat_ms = [x * 1000 for x in fig.latencies]
    log(f"server threads, max per phase: {fig.threads_by_phase}")
    result = {
        "metadata_p99_ms": round(percentile(lat_ms, 99), 2) if lat_ms else None,
        "metadata_p50_ms": round(percentile(lat_ms, 50), 2) if lat_ms else None,
        "metadata_requests": len(lat_ms),
        "metadata_max_ms": round(max(lat_ms), 2) if lat_ms else None,
        "metadata_connection": "keep-alive" if args.keepalive else "new",
        "failures": len(fig.failures),
        "max_threads": max(fig.threads) if fig.threads else None,
        "uploads_held": fig.uploads_held,
        "downloads_held": fig.downloads_held,
        "downloads_started": fig.downloads_started,
        "download_mib_read": round(fig.download_bytes / MIB, 1),
        "held_refused": len(fig.refused),
        "uploads_finished": len(finishers),
        "uploads_completed": len(finished_ok),
        "uploads_correct": len(finished_ok) - len(wrong),
        "seconds": args.seconds,
    }
    verdicts = []
    if failed_setup:
        verdicts.append(f"setup failed: {failed_setup}")
    if fig.failures:
        verdicts.append(f"{len(fig.failures)} metadata requests failed, e.g. {fig.failures[:3]}")
    if not lat_ms:
        verdicts.append("no metadata request was made")
    elif result["metadata_p99_ms"] > args.p99_limit_ms:
        verdicts.append(f"p99 {result['metadata_p99_ms']} ms > {args.p99_limit_ms} ms")
    if result["max_threads"] is not None and result["max_threads"] > args.max_threads:
        verdicts.append(f"server threads reached {result['max_threads']} > {args.max_threads}")
    if fig.downloads_started < fig.downloads_held:
        verdicts.append(f"only {fig.downloads_started} of {fig.downloads_held} held downloads got their 200 "
                        f"by the end of the window")
    if fig.refused:
        verdicts.append(f"{len(fig.refused)} held transfers refused or cut, e.g. {fig.refused[:3]}")
    want_finish = min(args.finish, args.uploads)
    if not failed_setup and (len(finished_ok) - len(wrong)) < want_finish:
        verdicts.append(f"{len(finished_ok) - len(wrong)} of {want_finish} finished uploads correct; "
                        f"{(problems + wrong)[:3]}")
    result["pass"] = not verdicts
    for v in verdicts:
        log(f"FAIL: {v}")
    if verdicts:
        log("---- server log (tail) ----\n" + log_tail + "\n---- end ----")
    log("PASSED" if not verdicts else "FAILED")
    print(json.dumps(result), flush=True)
    return 0 if not verdicts else 1


if __name__ == "__main__":
    sys.exit(main())
