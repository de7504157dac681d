#!/usr/bin/env python3
"""The mirror and the edge cache against the plain transfers they stand in for, in one run.

    python3 bench/mirror.py [--rounds N] [--size-mib M] [--binary PATH]

- mirror sync: a vendor directory (an image of M MiB of random bytes, disk_format raw, and its
  SHA256SUMS) served on loopback by Python's threading HTTP server; `ocellus mirror sync` into a
  fresh data directory each round (download, SHA-256 in the same pass as MD5, SHA-512 and
  BLAKE3, fsync, publish), against `curl` fetching the same file from the same server and
  against a client's upload of the same bytes to ocellus (the store's own intake).
- edge: an upstream ocellus holding the image and an edge ocellus in front of it; per round a
  fresh edge, its catalog synced, then a first download through it (pull-through: fetched,
  verified, written and streamed at once) and a second (from its own store), against `curl`
  from the upstream directly.

Prints every figure, the medians and the ratios.
"""

import argparse
import functools
import hashlib
import http.server
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

MIB = 1 << 20


class Vendor:
    """A directory served over HTTP by Python's threading server."""

    def __init__(self, directory):
        handler = functools.partial(Quiet, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def make_image(path, size):
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        left = size
        while left:
            chunk = bench.os.urandom(min(left, 8 * MIB))
            digest.update(chunk)
            file.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--binary", default=None)
    args = parser.parse_args()
    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    elif not bench.BIN.exists():
        bench.log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True, cwd=bench.ROOT)
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="ocellus-bench-mirror-", dir="/var/tmp"))
    figures = {"vendor_curl": [], "mirror_sync": [], "upload": [], "upstream_curl": [], "edge_cold": [],
               "edge_warm": []}
    try:
        images = work / "vendor" / "images"
        images.mkdir(parents=True)
        image = images / "bench-1.0.img"
        bench.log(f"making a {args.size_mib} MiB image")
        digest = make_image(image, size)
        (images / "SHA256SUMS").write_text(f"{digest}  bench-1.0.img\n")
        vendor = Vendor(work / "vendor")
        catalog = work / "mirror.toml"
        catalog.write_text(f"""
[[source]]
name = "bench"
kind = "sums"
base_url = "{vendor.base}/images/"
file = 'bench-(?P<version>[0-9.]+)\\.img'
sums = "SHA256SUMS"
signature = {{ none = "a benchmark" }}
disk_format = "raw"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
""")
        for round_number in range(args.rounds):
            bench.warm(image)
            figures["vendor_curl"].append(bench.curl_download(f"{vendor.base}/images/bench-1.0.img"))
            data = work / f"mirror-{round_number}"
            started = time.perf_counter()
            subprocess.run([str(bench.BIN), "mirror", "sync", "--catalog", str(catalog), "--data-dir", str(data)],
                           check=True, capture_output=True, timeout=bench.TIMEOUT)
            figures["mirror_sync"].append(size / (time.perf_counter() - started) / bench.MB)
            shutil.rmtree(data)
            bench.log(f"round {round_number + 1}: curl {figures['vendor_curl'][-1]:.0f} MB/s, "
                      f"mirror sync {figures['mirror_sync'][-1]:.0f} MB/s")
        vendor.close()

        upstream = bench.Server(work / "upstream")
        connection = bench.connect(upstream)
        # The store's own intake, for the mirror's figure: a client's upload of the same bytes
        # (MD5, SHA-512, BLAKE3, fsync), a fresh image each round.
        for _ in range(args.rounds):
            figures["upload"].append(bench.curl_upload(upstream, bench.create_image(connection), image))
        image_id = bench.create_image(connection)
        bench.curl_upload(upstream, image_id, image)
        edge_catalog = work / "edge.toml"
        edge_catalog.write_text(f"""
mode = "edge"

[edge]
source = "site"

[[source]]
name = "site"
kind = "glance"
base_url = "{upstream.base}"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
""")
        file_path = f"/v2/images/{image_id}/file"
        for round_number in range(args.rounds):
            figures["upstream_curl"].append(bench.curl_download(upstream.base + file_path))
            edge = bench.Server(work / f"edge-{round_number}",
                                ["--mirror-catalog", str(edge_catalog), "--mirror-refresher", "false"])
            reports = bench.request(bench.connect(edge), "POST", "/ocellus/v1/mirror/sync", {"sources": ["site"]})
            if reports["reports"][0]["outcome"] != "published":
                raise SystemExit(f"the edge did not take the catalog: {json.dumps(reports)}")
            figures["edge_cold"].append(bench.curl_download(edge.base + file_path))
            figures["edge_warm"].append(bench.curl_download(edge.base + file_path))
            edge.stop()
            shutil.rmtree(work / f"edge-{round_number}")
            bench.log(f"round {round_number + 1}: upstream {figures['upstream_curl'][-1]:.0f} MB/s, "
                      f"edge first {figures['edge_cold'][-1]:.0f} MB/s, again {figures['edge_warm'][-1]:.0f} MB/s")
        upstream.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"image {args.size_mib} MiB, {args.rounds} rounds, binary {bench.BIN}")
    for name, values in figures.items():
        print(f"{name:14} median {median[name]:7.0f} MB/s   ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"mirror sync / curl from the vendor:        {median['mirror_sync'] / median['vendor_curl']:.2f}")
    print(f"mirror sync / an upload of the same bytes: {median['mirror_sync'] / median['upload']:.2f}")
    print(f"edge first download / upstream directly:   {median['edge_cold'] / median['upstream_curl']:.2f}")
    print(f"edge second download / upstream directly:  {median['edge_warm'] / median['upstream_curl']:.2f}")


if __name__ == "__main__":
    main()
