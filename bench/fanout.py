#!/usr/bin/env python3
"""Many clients, one image: fan-out downloads against a sendfile(2) fan-out of the same bytes.

    python3 bench/fanout.py [--size-mib 1024] [--clients 1,16,64] [--rounds 3] [--binary PATH]

One random image is uploaded to the release server (lab mode). Then, for each fan-out N and
round, N `curl` processes start together and download it whole to /dev/null, and right after,
N `curl` processes fetch the same blob file from a reference server that answers each
connection on its own thread with sendfile(2) (no verification: the delivery limit of this
machine's loopback and page cache). Warm: the blob is in the page cache. Cold: the blob (and
its outboard) are evicted first, and the server's reads from the device during the fan-out are
taken from /proc/PID/io, in multiples of the image's size.

Prints, per N and temperature: the aggregate MiB/s (N x size / time until the last client
ends), its ratio to the reference's, the median and p99 of the clients' completion times and
their spread (p99 / median), and for cold runs the device bytes read per image size.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


class ConcurrentSendfileServer(bench.SendfileServer):
    """The reference server, answering every connection on a thread of its own."""

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()


def fan_out(url, clients, size):
    """Starts `clients` downloads at once; returns (aggregate MiB/s, completion times)."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    times = []
    for process in processes:
        out, _ = process.communicate(timeout=bench.TIMEOUT)
        if process.returncode != 0:
            raise RuntimeError(f"curl {url} failed: {process.returncode}")
        total, received = out.split()
        if int(received) != size:
            raise RuntimeError(f"curl {url}: {received} bytes, not {size}")
        times.append(float(total))
    wall = time.perf_counter() - started
    return clients * size / bench.MIB / wall, sorted(times)


def device_reads(pid):
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def percentile(values, fraction):
    return values[min(len(values) - 1, int(fraction * (len(values) - 1) + 0.5))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    parser.add_argument("--clients", default="1,16,64", help="fan-outs (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per fan-out and temperature (default 3)")
    parser.add_argument("--binary", help="ocellus binary (default: the release build)")
    args = parser.parse_args()
    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=bench.ROOT, check=True)
    fan_outs = [int(n) for n in args.clients.split(",")]
    size = args.size_mib * bench.MIB

    work = Path(tempfile.mkdtemp(prefix="ocellus-fanout-"))
    server = reference = None
    try:
        source = work / "image.bin"
        with open(source, "wb") as file:
            for _ in range(args.size_mib):
                file.write(os.urandom(bench.MIB))
        server = bench.Server(work / "data")
        connection = bench.connect(server)
        image = bench.create_image(connection, "fanout")
        bench.curl_upload(server, image, source)
        blob = bench.blob_paths(work / "data")[0]
        outboards = [path for path in bench.blob_paths(work / "data", outboards=True) if path.suffix == ".obao"]
        source.unlink()
        reference = ConcurrentSendfileServer(blob)
        url = f"{server.base}/v2/images/{image}/file"

        results = {}
        for temperature in ("warm", "cold"):
            for clients in fan_outs:
                rows = []
                for _ in range(args.rounds):
                    for name, target in (("ocellus", url), ("sendfile", reference.url)):
                        if temperature == "cold":
                            for path in [blob, *outboards]:
                                bench.evict(path)
                        else:
                            bench.warm(blob)
                        before = device_reads(server.process.pid)
                        rate, times = fan_out(target, clients, size)
                        reads = device_reads(server.process.pid) - before if name == "ocellus" else 0
                        rows.append((name, rate, times, reads))
                results[(temperature, clients)] = rows
                ours = [row for row in rows if row[0] == "ocellus"]
                refs = [row for row in rows if row[0] == "sendfile"]
                bench.log(f"{temperature} x{clients}: ocellus {[round(r[1]) for r in ours]} MiB/s, "
                          f"sendfile {[round(r[1]) for r in refs]} MiB/s")

        print(f"{'fan-out':<12}{'ocellus MiB/s':>15}{'sendfile MiB/s':>16}{'ratio':>8}"
              f"{'median s':>10}{'p99 s':>8}{'spread':>8}{'reads/size':>12}")
        for (temperature, clients), rows in results.items():
            ours = [row for row in rows if row[0] == "ocellus"]
            refs = [row for row in rows if row[0] == "sendfile"]
            rate = statistics.median(row[1] for row in ours)
            ref_rate = statistics.median(row[1] for row in refs)
            ratio = statistics.median(o[1] / r[1] for o, r in zip(ours, refs))
            times = sorted(t for row in ours for t in row[2])
            median, p99 = statistics.median(times), percentile(times, 0.99)
            reads = statistics.median(row[3] for row in ours) / size
            reads_cell = f"{reads:.2f}" if temperature == "cold" else "-"
            print(f"{temperature + ' x' + str(clients):<12}{rate:>15.0f}{ref_rate:>16.0f}{ratio:>8.2f}"
                  f"{median:>10.2f}{p99:>8.2f}{p99 / median:>8.2f}{reads_cell:>12}")
    finally:
        if reference:
            reference.close()
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
