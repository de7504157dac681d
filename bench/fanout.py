#!/usr/bin/env python3
"""Many clients, one image: fan-out downloads against a sendfile(2) fan-out of the same bytes.

    python3 bench/fanout.py [--size-mib 1024] [--clients 1,16,64] [--rounds 3] [--binary PATH]
                            [--temperatures warm,cold] [--tls]
                            [--glance URL [--glance-store DIR]]

One random image is uploaded to the release server (lab mode). Then, for each fan-out N and
round, N `curl` processes start together and download it whole to /dev/null, and right after,
N `curl` processes fetch the same blob file from a reference server that answers each
connection on its own thread with sendfile(2) (no verification: the delivery limit of this
machine's loopback and page cache). Warm: the blob is in the page cache. Cold: the blob (and
its outboard) are evicted first, and the server's reads from the device during the fan-out are
taken from /proc/PID/io, in multiples of the image's size.

With --glance, the same bytes are also uploaded to an unauthenticated Glance-compatible API at
URL (for example Glance 33 under its shipped uWSGI settings, set up by hand: none of it is part
of this project) and fanned out in each round as a third server. Its cold runs need
--glance-store, the directory of its file store, to evict the image's file; without it they are
left out.

With --tls, ocellus serves HTTPS with a self-signed certificate for 127.0.0.1 made by openssl,
and curl checks it; the references stay plain HTTP, so the ratio is what TLS costs.

Prints, per N and temperature: the aggregate MiB/s (N x size / time until the last client
ends), its ratio to the reference's, the median and p99 of the clients' completion times and
their spread (p99 / median) beside the reference's spread, and for cold runs the device bytes read per image size; with
--glance, Glance's aggregate, p99 and spread, and ocellus's ratio to its aggregate.
"""

import argparse
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import shutil
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


class ConcurrentSendfileServer(bench.SendfileServer):
    """The reference server, answering every connection on a thread of its own."""

    def dispatch(self, connection):
        threading.Thread(target=self.answer, args=(connection,), daemon=True).start()


class TlsServer(bench.Server):
    """The ocellus server on HTTPS, with `certificate` and `key` (PEM files)."""

    def __init__(self, data_dir, certificate, key):
        self.context = ssl.create_default_context(cafile=str(certificate))
        super().__init__(data_dir, extra=["--tls-cert", str(certificate), "--tls-key", str(key)])
        self.base = f"https://127.0.0.1:{self.port}"

    def connection(self, timeout=60):
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.context)


def self_signed(directory):
    """A certificate and key for 127.0.0.1, which curl is told to trust (CURL_CA_BUNDLE)."""
    certificate, key = directory / "cert.pem", directory / "key.pem"
    bench.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
               "-keyout", str(key), "-out", str(certificate)])
    os.environ["CURL_CA_BUNDLE"] = str(certificate)
    return certificate, key


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


def spread(rows):
    """p99 / median of the completion times of every client in `rows`."""
    times = sorted(t for row in rows for t in row[2])
    return percentile(times, 0.99) / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    parser.add_argument("--clients", default="1,16,64", help="fan-outs (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per fan-out and temperature (default 3)")
    parser.add_argument("--binary", help="ocellus binary (default: the release build)")
    parser.add_argument("--temperatures", default="warm,cold", help="warm, cold or both (default warm,cold)")
    parser.add_argument("--tls", action="store_true", help="ocellus serves HTTPS")
    parser.add_argument("--glance", metavar="URL", help="also fan out from this unauthenticated Glance API")
    parser.add_argument("--glance-store", metavar="DIR", help="its file store's directory, for cold runs")
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
        server = TlsServer(work / "data", *self_signed(work)) if args.tls else bench.Server(work / "data")
        image = bench.create_image(server.connection(), "fanout")
        bench.curl_upload(server, image, source)
        blob = bench.blob_paths(work / "data")[0]
        outboards = [path for path in bench.blob_paths(work / "data", outboards=True) if path.suffix == ".obao"]
        targets = [("ocellus", f"{server.base}/v2/images/{image}/file")]
        glance_file = None
        if args.glance:
            glance = SimpleNamespace(base=args.glance.rstrip("/"))
            glance.port = int(glance.base.rsplit(":", 1)[1])
            glance_image = bench.create_image(bench.connect(glance), "fanout")
            bench.curl_upload(glance, glance_image, source)
            targets.append(("glance", f"{glance.base}/v2/images/{glance_image}/file"))
            if args.glance_store:
                glance_file = Path(args.glance_store) / glance_image
        source.unlink()
        reference = ConcurrentSendfileServer(blob)
        targets.append(("sendfile", reference.url))

        results = {}
        for temperature in args.temperatures.split(","):
            for clients in fan_outs:
                rows = []
                for _ in range(args.rounds):
                    for name, target in targets:
                        if name == "glance" and temperature == "cold" and glance_file is None:
                            continue
                        if temperature == "cold":
                            for path in [blob, *outboards, *([glance_file] if glance_file else [])]:
                                bench.evict(path)
                        else:
                            bench.warm(blob)
                            if glance_file:
                                bench.warm(glance_file)
                        before = device_reads(server.process.pid)
                        rate, times = fan_out(target, clients, size)
                        reads = device_reads(server.process.pid) - before if name == "ocellus" else 0
                        rows.append((name, rate, times, reads))
                results[(temperature, clients)] = rows
                bench.log(f"{temperature} x{clients}: " + ", ".join(
                    f"{name} {[round(row[1]) for row in rows if row[0] == name]} MiB/s" for name, _ in targets))

        print(f"{'fan-out':<12}{'ocellus MiB/s':>15}{'sendfile MiB/s':>16}{'ratio':>8}"
              f"{'median s':>10}{'p99 s':>8}{'spread':>8}{'sendfile spread':>17}{'reads/size':>12}")
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
                  f"{median:>10.2f}{p99:>8.2f}{p99 / median:>8.2f}{spread(refs):>17.2f}{reads_cell:>12}")
        glance_rows = {key: [row for row in rows if row[0] == "glance"] for key, rows in results.items()}
        if any(glance_rows.values()):
            print(f"\n{'fan-out':<12}{'glance MiB/s':>14}{'median s':>10}{'p99 s':>8}{'spread':>8}"
                  f"{'ocellus / glance':>18}")
            for (temperature, clients), theirs in glance_rows.items():
                if not theirs:
                    continue
                ours = [row for row in results[(temperature, clients)] if row[0] == "ocellus"]
                times = sorted(t for row in theirs for t in row[2])
                median, p99 = statistics.median(times), percentile(times, 0.99)
                ratio = statistics.median(o[1] / g[1] for o, g in zip(ours, theirs))
                print(f"{temperature + ' x' + str(clients):<12}{statistics.median(row[1] for row in theirs):>14.0f}"
                      f"{median:>10.2f}{p99:>8.2f}{p99 / median:>8.2f}{ratio:>18.2f}")
    finally:
        if reference:
            reference.close()
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
