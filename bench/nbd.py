#!/usr/bin/env python3
"""The NBD export against HTTP downloads of the same images, in one run.

    python3 bench/nbd.py [--rounds N] [--binary PATH]

Starts one ocellus (the release build unless --binary) with the NBD export on loopback and
measures, alternating round by round so that the machine's drift hits both sides alike:

- sparse: a 4 GiB raw image holding 64 MiB of data (1 MiB every 64 MiB) copied to a file by
  `nbdcopy` from `nbd://` and by `qemu-img convert` from `nbd://` (both skip the holes
  through block status), against `curl` of `GET /v2/images/{id}/file` to a file; seconds,
  the ratio, and the allocated size of each copy;
- dense: a 1 GiB random image read whole by `nbdcopy ... null:` and by `curl -o /dev/null`;
  MB/s and the NBD/HTTP ratio.

Every byte on both paths is verified against the blob's tree before it is sent. Needs curl,
qemu-img and nbdcopy (`apt-get install curl qemu-utils libnbd-bin`) and about 6 GiB free.
"""

import argparse
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

MIB = 1 << 20


def make_sparse(path, size=4096 * MIB, run=MIB, stride=64 * MIB):
    with open(path, "wb") as out, open("/dev/urandom", "rb") as random:
        for _ in range(size // stride):
            out.write(random.read(run))
            out.seek(stride - run, os.SEEK_CUR)
        out.truncate(size)


def make_dense(path, size=1024 * MIB):
    with open(path, "wb") as out, open("/dev/urandom", "rb") as random:
        for _ in range(size // MIB):
            out.write(random.read(MIB))


def timed(argv):
    started = time.perf_counter()
    subprocess.run(argv, check=True, timeout=bench.TIMEOUT, capture_output=True)
    return time.perf_counter() - started


def upload(server, path):
    image_id = bench.create_image(bench.connect(server))
    bench.curl_upload(server, image_id, path)
    return image_id


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each comparison (default 3)")
    parser.add_argument("--binary", help="ocellus binary (default: build and use the release one)")
    args = parser.parse_args()
    for tool in ("curl", "qemu-img", "nbdcopy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install curl qemu-utils libnbd-bin")
    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=bench.ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="ocellus-nbd-bench-"))
    server = None
    try:
        data_dir = work / "data"
        data_dir.mkdir()
        nbd_port = bench.free_port()
        server = bench.Server(data_dir, extra=["--nbd-listen", f"127.0.0.1:{nbd_port}"])
        sparse, dense = work / "sparse.raw", work / "dense.raw"
        make_sparse(sparse)
        make_dense(dense)
        sparse_id, dense_id = upload(server, sparse), upload(server, dense)
        sparse.unlink()
        dense.unlink()

        figures = {"nbdcopy": [], "qemu-img convert": [], "curl": [], "nbd_dense": [], "http_dense": []}
        allocated = {}
        out = work / "copy.raw"
        nbd = f"nbd://127.0.0.1:{nbd_port}"
        for round_index in range(args.rounds):
            for name, argv in (
                ("nbdcopy", ["nbdcopy", f"{nbd}/{sparse_id}", str(out)]),
                ("qemu-img convert", ["qemu-img", "convert", "-f", "raw", "-O", "raw", f"{nbd}/{sparse_id}", str(out)]),
                ("curl", ["curl", "-sf", "-o", str(out), f"{server.base}/v2/images/{sparse_id}/file"]),
            ):
                figures[name].append(timed(argv))
                allocated[name] = out.stat().st_blocks * 512
                out.unlink()
            seconds = timed(["nbdcopy", f"{nbd}/{dense_id}", "null:"])
            figures["nbd_dense"].append(1024 * MIB / seconds / bench.MB)
            figures["http_dense"].append(bench.curl_download(f"{server.base}/v2/images/{dense_id}/file"))
            bench.log(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()))

        median = {name: statistics.median(values) for name, values in figures.items()}
        print("sparse 4 GiB image, 64 MiB of data, copied to a file (median of"
              f" {args.rounds}):")
        for name in ("nbdcopy", "qemu-img convert", "curl"):
            print(f"  {name:<18} {median[name]:7.2f} s   {allocated[name] / MIB:8.1f} MiB allocated"
                  f"   curl/this {median['curl'] / median[name]:6.1f}x")
        print("dense 1 GiB image read whole (median):")
        print(f"  nbdcopy null:      {median['nbd_dense']:7.0f} MB/s")
        print(f"  curl /dev/null     {median['http_dense']:7.0f} MB/s")
        print(f"  NBD/HTTP           {median['nbd_dense'] / median['http_dense']:7.2f}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
