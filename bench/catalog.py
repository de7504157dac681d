#!/usr/bin/env python3
"""Lists over large catalogs: what each filter costs at 10,000, 100,000 (and 1,000,000) images.

    python3 bench/catalog.py [--sizes 10000,100000] [--requests 15] [--binary PATH]

For each size: a fresh data directory gets one small active image through the API (the
template), then `examples/catalog.rs` adds the rest through the store's own bulk path (see
its header for the catalog's shape); the release server then starts on it (lab mode, default
`db_cache_size`), and each list query below runs --requests times on one keep-alive
connection. Prints, per query and size, the median and p99 latency and the images returned,
then the time to make the catalog and to count its running totals afresh (the upgrade to
schema 11), a scrape of /metrics, the cold start (to the first answered request), the
server's RSS after the queries and the data directory's database size.
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

EXAMPLE = bench.ROOT / "target" / "release" / "examples" / "catalog"


# Lab mode takes the caller from headers: a member of project-7, not an admin.
PROJECT = {"X-Project-Id": "project-7", "X-Roles": "member,reader"}


def queries(size):
    # The newest tenth of the catalog (created one second apart, ending now).
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=size // 10)
    return [
        ("default page (25)", "/v2/images"),
        ("limit=1000", "/v2/images?limit=1000"),
        ("name= (hit, 0.1 %)", "/v2/images?name=ubuntu-24.04"),
        ("name= (miss)", "/v2/images?name=nomatch"),
        ("status=queued (5 %)", "/v2/images?status=queued"),
        ("status=active (95 %)", "/v2/images?status=active"),
        ("visibility=public (5 %)", "/v2/images?visibility=public"),
        ("owner= (1 %)", "/v2/images?owner=project-7"),
        ("tag= (2 %)", "/v2/images?tag=branch-7"),
        ("os_distro= (10 %)", "/v2/images?os_distro=alpine"),
        ("os_distro= & tag=", "/v2/images?os_distro=alpine&tag=branch-7"),
        ("created_at=gte: (10 %)", "/v2/images?created_at=gte:" + since.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("updated_at=gte: (10 %)", "/v2/images?updated_at=gte:" + since.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("name=in: (2 names)", "/v2/images?name=in:ubuntu-24.04,ci-17"),
        ("checksum= (miss)", "/v2/images?checksum=" + "0" * 32),
        ("hw_disk_bus= (10 %)", "/v2/images?hw_disk_bus=virtio"),
        ("name=, sort_key=name", "/v2/images?name=ubuntu-24.04&sort_key=name&sort_dir=asc"),
        ("tag=, sort_key=name", "/v2/images?tag=branch-7&sort_key=name&sort_dir=asc"),
        # A project that is not admin: its own images (1 %), public ones (5 %), none shared.
        ("project: default page", "/v2/images", PROJECT),
        ("project: status=active", "/v2/images?status=active", PROJECT),
        ("project: os_distro=", "/v2/images?os_distro=alpine", PROJECT),
    ]


def timed_list(connection, path, requests, headers=None):
    latencies = []
    count = 0
    for _ in range(requests + 1):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        count = len(json.loads(body)["images"])
        latencies.append(elapsed * 1000)
    latencies = sorted(latencies[1:])  # the first request warms the cache
    p99 = latencies[min(len(latencies) - 1, int(0.99 * (len(latencies) - 1) + 0.5))]
    return statistics.median(latencies), p99, count


def timed_get(connection, path, requests):
    """The median milliseconds of `requests` GETs of `path` (after one to warm up)."""
    latencies = []
    for _ in range(requests + 1):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        latencies.append((time.perf_counter() - started) * 1000)
    return statistics.median(latencies[1:])


def build(args):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "catalog"], cwd=bench.ROOT, check=True)
    if not args.binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=bench.ROOT, check=True)


def measure(size, work, requests):
    data_dir = work / f"data-{size}"
    data_dir.mkdir()
    server = bench.Server(data_dir)
    connection = bench.connect(server)
    template = bench.create_image(connection, "template")
    connection.request("PUT", f"/v2/images/{template}/file", body=os.urandom(4096),
                       headers={"Content-Type": "application/octet-stream"})
    response = connection.getresponse()
    response.read()
    if response.status != 204:
        raise RuntimeError(f"template upload: {response.status}")
    server.stop()
    made = json.loads(bench.run([str(EXAMPLE), str(data_dir), str(size - 1), template]).stdout)
    bench.log(f"{size}: catalog made in {made['seconds']} s")
    server = bench.Server(data_dir)
    figures = {"startup_s": server.startup_seconds, "make_s": made["seconds"],
               "count_totals_s": made["count_totals_seconds"]}
    connection = bench.connect(server)
    results = {}
    for label, path, *headers in queries(size):
        results[label] = timed_list(connection, path, requests, *headers)
    figures["metrics_ms"] = timed_get(connection, "/metrics", requests)
    figures["rss_mib"] = server.rss_kib() / 1024
    figures["peak_rss_mib"] = server.rss_kib("VmHWM") / 1024
    figures["db_mib"] = os.path.getsize(data_dir / "ocellus.redb") / (1 << 20)
    server.stop()
    # A changed indexed_properties rebuilds the filter index at start (as the upgrade does).
    server = bench.Server(data_dir, ["--indexed-properties", "os_distro,hw_*"], ready_within=1800)
    figures["rebuild_s"] = server.startup_seconds
    figures["rebuild_peak_rss_mib"] = server.rss_kib("VmHWM") / 1024
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return results, figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="catalog sizes (default 10000,100000)")
    parser.add_argument("--requests", type=int, default=15, help="requests per query (default 15)")
    parser.add_argument("--binary", help="ocellus binary (default: the release build)")
    args = parser.parse_args()
    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    build(args)
    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ocellus-catalog-"))
    try:
        measured = {size: measure(size, work, args.requests) for size in sizes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    largest = sizes[-1]
    header = "query".ljust(26) + "".join(f"{size:>26,}" for size in sizes) + "   ratio at " + f"{largest:,}"
    print(header)
    print(" " * 26 + "".join(f"{'median / p99 ms (n)':>26}" for _ in sizes) + "   to the default page")
    baseline = measured[largest][0]["default page (25)"][0]
    for label, *_ in queries(sizes[0]):
        cells = []
        for size in sizes:
            median, p99, count = measured[size][0][label]
            cells.append(f"{median:8.2f} / {p99:7.2f} ({count:>4})")
        ratio = measured[largest][0][label][0] / baseline
        print(label.ljust(26) + "".join(f"{cell:>26}" for cell in cells) + f"{ratio:>10.2f}")
    for name, unit in (("make_s", "s to make"), ("count_totals_s", "s to count the totals"),
                       ("metrics_ms", "ms per GET /metrics"), ("startup_s", "s cold start"),
                       ("rss_mib", "MiB RSS after queries"), ("peak_rss_mib", "MiB peak RSS"),
                       ("db_mib", "MiB database"), ("rebuild_s", "s to rebuild the index"),
                       ("rebuild_peak_rss_mib", "MiB peak RSS, rebuild")):
        print(unit.ljust(26) + "".join(f"{measured[size][1][name]:>24.2f}" for size in sizes))


if __name__ == "__main__":
    main()
