#!/usr/bin/env python3
"""The ocellus benchmark: the release binary against this machine's own limits.

One command (`python3 bench/run.py`) builds the release binary, starts it on
loopback with a fresh data directory, and measures in the same run:

- the machine's limits: single-core md5, sha512 and BLAKE3 rates of the crates
  ocellus uses (examples/hash_rates.rs) on the benchmark's own data, fsync'd
  sequential write throughput in the data directory's filesystem, and the
  loopback delivery limit (the same file served by a minimal sendfile(2)
  server to the same curl, fetched right before each of our downloads);
- 1 GiB upload (`curl -T`, random data already in the page cache, `Expect:`
  disabled) and full verified download, MB/s; the first download of a fresh
  upload (from disk); a re-upload of identical bytes (dedupe): MB/s and bytes
  added;
- 10,000 metadata-only images created by 1 and by 8 concurrent clients; the
  latency of `GET /v2/images?limit=1000`; paging through all at the default
  page size;
- `GET /v2/images/{id}` with wrk (16 connections, 10 s), lab mode and with an
  API key;
- peak RSS idle, during one 1 GiB upload and during 8 parallel ones;
- cold downloads (blob evicted from the page cache) against the device's own
  sequential read rate (dd iflag=direct bs=4M on the same blob), in 2 x --runs + 1
  pairs judged on the median of each pair's ratio;
- metadata p99 and server threads while 300 slow uploads and 600 slow
  downloads are held open (tests/system/crowd.py);
- cold start to the first answered request with 10,000 images.

It prints one table (figure, limit, ratio, target) and writes it as JSON.
Byte flows, wrk runs, paging and cold starts are the median of --runs runs
(default 3); list latency is the median of 5 requests; downloads, which take
under a second each, run 2 x --runs + 1 times in pairs with the sendfile
reference. Every subprocess and request has a timeout; nothing leaves loopback.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "ocellus"
HASH_RATES = ROOT / "target" / "release" / "examples" / "hash_rates"
MB = 1e6
MIB = 1 << 20
TIMEOUT = 600


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, timeout=TIMEOUT, text=True, capture_output=True, **kwargs)


class Server:
    """One ocellus process on a loopback port."""

    def __init__(self, data_dir, extra=(), ready_within=30):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(data_dir).parent / f"server-{self.port}.log", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCELLUS_")}
        env["OCELLUS_LOG"] = "warn"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.startup_seconds = self.wait_ready(started, ready_within)

    def connection(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def wait_ready(self, started, ready_within=30):
        deadline = started + ready_within
        while time.perf_counter() < deadline:
            try:
                connection = self.connection(timeout=1)
                connection.request("GET", "/versions")
                if connection.getresponse().status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("the server exited during startup")
            time.sleep(0.002)
        raise RuntimeError(f"the server did not answer within {ready_within} s")

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


class RssPeak:
    """Samples a server's RSS every 10 ms while active; `peak_mib` after exit."""

    def __init__(self, server):
        self.server = server
        self.peak = 0
        self.stopping = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, self.server.rss_kib())
            except OSError:
                return
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()

    @property
    def peak_mib(self):
        return self.peak / 1024


def request(connection, method, path, body=None, headers=None):
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return json.loads(data) if data else None


def connect(server):
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)


def create_image(connection, name="bench"):
    image = request(connection, "POST", "/v2/images", {"name": name, "disk_format": "raw", "container_format": "bare"})
    return image["id"]


def warm(path):
    """Reads a file into the page cache. The kernel here reclaims pages left cold for a minute
    or two, and an upload must not be measured at the speed curl can read its input from disk."""
    with open(path, "rb") as file:
        while file.read(8 * MIB):
            pass


def curl_upload(server, image_id, path, headers=(), warm_first=True):
    if warm_first:
        warm(path)
    argv = ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{speed_upload}", "-H", "Expect:",
            "-H", "Content-Type: application/octet-stream", "-T", str(path)]
    for header in headers:
        argv += ["-H", header]
    return float(run(argv + [f"{server.base}/v2/images/{image_id}/file"]).stdout) / MB


def curl_download(url):
    return float(run(["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{speed_download}", url]).stdout) / MB


def blob_bytes(data_dir):
    total = 0
    for directory, _, files in os.walk(Path(data_dir) / "blobs"):
        for name in files:
            total += os.path.getsize(os.path.join(directory, name))
    return total


def blob_paths(data_dir, outboards=False):
    """The blob files, and with `outboards` their outboard files (`.obao`) too."""
    files = (Path(data_dir) / "blobs").rglob("*")
    return sorted(path for path in files if path.is_file() and (outboards or path.suffix != ".obao"))


def evict(path):
    """Drops a file's pages from the page cache (they are clean, so nothing is lost)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def direct_read_rate(path):
    """The device's sequential read rate on this file: dd with O_DIRECT and 4 MiB blocks, MB/s."""
    size = os.path.getsize(path)
    started = time.perf_counter()
    run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none"])
    return size / (time.perf_counter() - started) / 1e6


def fsync_write_rate(directory, size):
    path = Path(directory) / "fsync-probe"
    chunk = os.urandom(MIB)
    started = time.perf_counter()
    with open(path, "wb") as file:
        for _ in range(size // MIB):
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
    elapsed = time.perf_counter() - started
    path.unlink()
    return size / elapsed / MB


class SendfileServer:
    """A minimal HTTP server that answers every GET with one file through sendfile(2): the
    loopback delivery limit. Serves one connection at a time until closed."""

    def __init__(self, path):
        self.path = path
        self.size = os.path.getsize(path)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/file"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.dispatch(connection)

    def dispatch(self, connection):
        """Answers connections one at a time, on the server's thread."""
        self.answer(connection)

    def answer(self, connection):
        """Reads one request head and answers it with the whole file."""
        with connection:
            connection.settimeout(TIMEOUT)
            received = b""
            while b"\r\n\r\n" not in received:
                more = connection.recv(4096)
                if not more:
                    return
                received += more
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\nConnection: close\r\n\r\n"
            connection.sendall(head.encode())
            with open(self.path, "rb") as file:
                connection.sendfile(file)

    def close(self):
        # shutdown wakes the accept() blocked in the serving thread; close alone does not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(timeout=60)


def wrk(url, headers=()):
    argv = ["wrk", "-t2", "-c16", "-d10s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    output = run(argv + [url]).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(percent):
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        return float(match.group(1)) * units[match.group(2)]

    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        raise RuntimeError(f"wrk saw {non_2xx.group(1)} error answers")
    return requests, latency(50), latency(99)


def wrk_median(url, runs, headers=()):
    """`runs` wrk runs; the median of each figure (req/s, p50, p99) and every run's figures."""
    results = [wrk(url, headers) for _ in range(runs)]
    medians = tuple(statistics.median(run[index] for run in results) for index in range(3))
    return medians, results


def create_many(server, count, clients):
    """Creates `count` images with `clients` concurrent keep-alive connections; images/s."""
    per_client = count // clients
    errors = []

    def worker(index):
        try:
            connection = connect(server)
            for number in range(per_client):
                create_image(connection, f"bench-{clients}-{index}-{number}")
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return per_client * clients / elapsed


def timed(action):
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def page_through(server):
    connection = connect(server)
    path, pages, seen = "/v2/images", 0, 0
    while path:
        body = request(connection, "GET", path)
        pages += 1
        seen += len(body["images"])
        path = body.get("next")
    return pages, seen


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each upload (default 1024)")
    parser.add_argument("--images", type=int, default=10000, help="metadata-only images (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each byte flow (default 3)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="JSON output file")
    parser.add_argument("--no-build", action="store_true", help="use the existing release binary")
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is required (apt-get install curl wrk)")
    if not args.no_build:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "ocellus", "--example", "hash_rates"],
                       cwd=ROOT, check=True, timeout=1800)

    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="ocellus-bench-"))
    figures = {}
    servers = []
    try:
        data_dir = work / "data"
        data_dir.mkdir()
        # Metadata and latency phases run first, before any gigabyte file exists: the
        # writeback, and later the reclaim, of the inputs' pages disturbed their tail latencies.
        server = Server(data_dir)
        servers.append(server)
        time.sleep(0.5)
        figures["rss_idle_mib"] = server.rss_kib() / 1024

        log(f"creating {args.images} images")
        half = args.images // 2
        figures["create_1_client_per_s"] = create_many(server, half, 1)
        figures["create_8_clients_per_s"] = create_many(server, args.images - half, 8)
        connection = connect(server)
        list_times = [timed(lambda: request(connection, "GET", "/v2/images?limit=1000")) for _ in range(5)]
        figures["list_1000_ms"] = statistics.median(list_times) * 1000
        pages = {}
        figures["page_all_s"] = statistics.median(
            timed(lambda: pages.update(result=page_through(server))) for _ in range(args.runs))
        figures["page_all_pages"], figures["page_all_images"] = pages["result"]
        shown = request(connection, "GET", "/v2/images?limit=1")["images"][0]["id"]

        log("show with wrk")
        (figures["show_rps"], figures["show_p50_ms"], figures["show_p99_ms"]), figures["show_runs"] = wrk_median(
            f"{server.base}/v2/images/{shown}", args.runs)
        server.stop()
        servers.remove(server)

        log("cold starts and show with an API key")
        created = json.loads(run([str(BIN), "key", "create", "--data-dir", str(data_dir), "--project", "bench",
                                  "--role", "admin", "--name", "bench", "--json"]).stdout)
        starts = []
        for _ in range(args.runs):
            server = Server(data_dir, ["--auth", "keys"])
            servers.append(server)
            starts.append(server.startup_seconds)
            if len(starts) < args.runs:
                server.stop()
                servers.remove(server)
        figures["cold_start_ms"] = statistics.median(starts) * 1000
        figures["cold_start_images"] = figures["page_all_images"]
        key = f"X-Auth-Token: {created['key']}"
        show = f"{server.base}/v2/images/{shown}"
        # The first use verifies the key with argon2; wrk then measures the cached path.
        run(["curl", "-s", "-f", "-o", "/dev/null", "-H", key, show])
        (figures["show_key_rps"], figures["show_key_p50_ms"], figures["show_key_p99_ms"]), figures["show_key_runs"] = (
            wrk_median(show, args.runs, [key]))
        server.stop()
        servers.remove(server)

        log("machine limits")
        files = []
        for index in range(args.runs):
            path = work / f"random-{index}.bin"
            with open("/dev/urandom", "rb") as source, open(path, "wb") as target:
                for _ in range(args.size_mib):
                    target.write(source.read(MIB))
            files.append(path)
        # Written out before the limits are measured, not by writeback in the middle of them.
        os.sync()
        hashes = json.loads(run([str(HASH_RATES), str(files[0])]).stdout)
        fsync_rate = statistics.median(fsync_write_rate(data_dir, size) for _ in range(args.runs))
        figures["limit_md5_mbps"] = hashes["md5"]
        figures["limit_sha512_mbps"] = hashes["sha512"]
        figures["limit_blake3_mbps"] = hashes["blake3"]
        figures["limit_fsync_write_mbps"] = fsync_rate

        server = Server(data_dir)
        servers.append(server)
        connection = connect(server)
        log(f"{args.runs} uploads and downloads of {args.size_mib} MiB")
        ids, uploads, downloads = [], [], []
        with RssPeak(server) as one_upload:
            for path in files:
                image_id = create_image(connection)
                uploads.append(curl_upload(server, image_id, path))
                ids.append(image_id)
        # Uploads bypass the page cache (O_DIRECT), so the first download reads from the disk;
        # it is reported on its own, and the measured downloads, like the reference, are warm.
        figures["download_first_mbps"] = curl_download(f"{server.base}/v2/images/{ids[0]}/file")
        # Cold downloads against the device's own sequential read rate: each pair evicts the
        # blobs from the page cache, reads one with O_DIRECT in 4 MiB blocks (what dd reaches
        # on this disk), evicts again and downloads.
        blobs = blob_paths(data_dir)
        everything = blob_paths(data_dir, outboards=True)
        # The disk and this VM drift between seconds, so there are 2 x --runs + 1 pairs and the
        # target is judged on the median of each pair's own ratio.
        device, cold = [], []
        for _ in range(2 * args.runs + 1):
            for path in everything:
                evict(path)
            device.append(direct_read_rate(blobs[0]))
            for path in everything:
                evict(path)
            cold.append(curl_download(f"{server.base}/v2/images/{ids[0]}/file"))
        figures["limit_device_read_mbps"] = statistics.median(device)
        figures["download_cold_mbps"] = statistics.median(cold)
        figures["download_cold_runs"] = cold
        figures["limit_device_read_runs"] = device
        figures["download_cold_ratio"] = statistics.median(c / d for c, d in zip(cold, device))
        # Each download runs right after the sendfile reference fetches the same bytes, so that
        # both see the same machine state (this VM's loopback rate drifts between minutes).
        reference = SendfileServer(files[0])
        references = []
        try:
            for _ in range(2 * args.runs + 1):
                references.append(curl_download(reference.url))
                downloads.append(curl_download(f"{server.base}/v2/images/{ids[0]}/file"))
        finally:
            reference.close()
        figures["limit_sendfile_mbps"] = statistics.median(references)
        figures["download_ratios"] = [ours / limit for ours, limit in zip(downloads, references)]
        figures["upload_mbps"] = statistics.median(uploads)
        figures["upload_runs"] = uploads
        figures["download_mbps"] = statistics.median(downloads)
        figures["download_runs"] = downloads
        figures["rss_one_upload_mib"] = one_upload.peak_mib

        # The server closes keep-alive connections idle for 10 s (its header-read timeout), so
        # each phase opens its own.
        before = blob_bytes(data_dir)
        connection = connect(server)
        dedupe = [curl_upload(server, create_image(connection), files[0]) for _ in range(args.runs)]
        figures["dedupe_upload_mbps"] = statistics.median(dedupe)
        figures["dedupe_runs"] = dedupe
        figures["dedupe_bytes_added"] = blob_bytes(data_dir) - before

        log("8 parallel uploads")
        connection = connect(server)
        parallel_ids = [create_image(connection) for _ in range(8)]
        for path in files:
            warm(path)
        with RssPeak(server) as eight_uploads:
            # result() re-raises a failed upload, so the peak is never that of failed uploads.
            with concurrent.futures.ThreadPoolExecutor(len(parallel_ids)) as pool:
                parallel = [pool.submit(curl_upload, server, image_id, files[index % len(files)], (), False)
                           for index, image_id in enumerate(parallel_ids)]
                for upload in parallel:
                    upload.result(timeout=TIMEOUT)
        figures["rss_eight_uploads_mib"] = eight_uploads.peak_mib
        server.stop()
        servers.remove(server)

        # Metadata latency under a crowd of slow transfers (300 uploads and 600 downloads held
        # open), measured by the system test of the same name against the release binary.
        log("metadata under 300 slow uploads and 600 slow downloads")
        crowd = subprocess.run([sys.executable, str(ROOT / "tests" / "system" / "crowd.py"), str(BIN),
                                "--seconds", "10"], timeout=TIMEOUT, text=True, capture_output=True)
        crowd_figures = json.loads(crowd.stdout.strip().splitlines()[-1])
        figures["crowd_metadata_p99_ms"] = crowd_figures["metadata_p99_ms"]
        figures["crowd_max_threads"] = crowd_figures["max_threads"]
        figures["crowd"] = crowd_figures
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    report(figures, args)


def report(figures, args):
    upload_limit = min(figures["limit_fsync_write_mbps"], figures["limit_sha512_mbps"])
    rows = [
        # name, value, unit, limit (or None), target description, passes
        ("upload (curl -T)", figures["upload_mbps"], "MB/s", upload_limit,
         ">= 0.85 x min(fsync write, sha512)", figures["upload_mbps"] >= 0.85 * upload_limit),
        ("download (verified)", figures["download_mbps"], "MB/s", figures["limit_sendfile_mbps"],
         ">= 0.8 x sendfile", figures["download_mbps"] >= 0.8 * figures["limit_sendfile_mbps"]),
        ("download, first (from disk)", figures["download_first_mbps"], "MB/s", None, "", True),
        ("download, cold (from disk)", figures["download_cold_mbps"], "MB/s", figures["limit_device_read_mbps"],
         f">= 0.8 x dd direct (pairs: {figures['download_cold_ratio']:.2f})",
         figures["download_cold_ratio"] >= 0.8),
        ("dedupe re-upload", figures["dedupe_upload_mbps"], "MB/s", upload_limit, "", True),
        ("dedupe bytes added", figures["dedupe_bytes_added"], "B", None, "0", figures["dedupe_bytes_added"] == 0),
        ("create, 1 client", figures["create_1_client_per_s"], "img/s", None, "", True),
        ("create, 8 clients", figures["create_8_clients_per_s"], "img/s", None, ">= 500",
         figures["create_8_clients_per_s"] >= 500),
        ("list limit=1000", figures["list_1000_ms"], "ms", None, "<= 20", figures["list_1000_ms"] <= 20),
        (f"page all ({figures['page_all_pages']} pages)", figures["page_all_s"], "s", None, "<= 1",
         figures["page_all_s"] <= 1),
        ("show, lab mode", figures["show_rps"], "req/s", None, ">= 10000", figures["show_rps"] >= 10000),
        ("show p99, lab mode", figures["show_p99_ms"], "ms", None, "<= 5", figures["show_p99_ms"] <= 5),
        ("show, API key", figures["show_key_rps"], "req/s", None, ">= 10000", figures["show_key_rps"] >= 10000),
        ("show p99, API key", figures["show_key_p99_ms"], "ms", None, "<= 5", figures["show_key_p99_ms"] <= 5),
        ("RSS idle", figures["rss_idle_mib"], "MiB", None, "<= 15", figures["rss_idle_mib"] <= 15),
        ("RSS peak, 1 upload", figures["rss_one_upload_mib"], "MiB", None, "<= 64", figures["rss_one_upload_mib"] <= 64),
        ("RSS peak, 8 uploads", figures["rss_eight_uploads_mib"], "MiB", None, "<= 128",
         figures["rss_eight_uploads_mib"] <= 128),
        ("metadata p99, crowd of 900", figures["crowd_metadata_p99_ms"], "ms", None, "<= 100",
         figures["crowd_metadata_p99_ms"] <= 100 and figures["crowd"]["pass"]),
        ("server threads, crowd of 900", figures["crowd_max_threads"], "", None, "<= 64",
         figures["crowd_max_threads"] <= 64),
        (f"cold start ({figures['cold_start_images']} images)", figures["cold_start_ms"], "ms", None, "<= 200",
         figures["cold_start_ms"] <= 200),
    ]
    print(f"{'figure':<30} {'value':>12} {'unit':<6} {'limit':>10} {'ratio':>6}  {'target':<36} ok")
    print(f"{'machine: md5 / sha512 / blake3':<30} {figures['limit_md5_mbps']:.0f} / {figures['limit_sha512_mbps']:.0f} / "
          f"{figures['limit_blake3_mbps']:.0f} MB/s single core")
    print(f"{'machine: fsync write, sendfile':<30} {figures['limit_fsync_write_mbps']:.0f} / "
          f"{figures['limit_sendfile_mbps']:.0f} MB/s")
    table = []
    for name, value, unit, limit, target, passes in rows:
        ratio = value / limit if limit else None
        limit_text = f"{limit:.0f}" if limit else ""
        ratio_text = f"{ratio:.2f}" if ratio is not None else ""
        print(f"{name:<30} {value:>12.2f} {unit:<6} {limit_text:>10} {ratio_text:>6}  {target:<36} "
              f"{'yes' if passes else 'NO'}")
        table.append({"figure": name, "value": value, "unit": unit, "limit": limit, "ratio": ratio,
                      "target": target, "met": passes})
    result = {"size_mib": args.size_mib, "images": args.images, "runs": args.runs, "figures": figures, "table": table}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
