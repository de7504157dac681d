#!/usr/bin/env python3
"""Sparse transfers over NBD (issue 16).

Uploads a 4 GiB raw image holding 64 MiB of data (64 runs of 1 MiB, one every 64 MiB, zeros
between) through `curl -T` to a server with the NBD export on, then copies it with libnbd's
`nbdcopy` and with `qemu-img convert` from `nbd://`, and downloads it whole with curl:

- both copies hold exactly the image's bytes (md5 against the upload);
- both are sparse: their allocated size (`du`) is within 64 MiB + 16 MiB;
- each takes a fraction of the full download's time (at most a third);
- the extent map the upload recorded names exactly the 64 data runs.

Usage: sparse_nbd.py PATH_TO_OCELLUS_BINARY
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import Server, binary_arg, free_port, install_sigterm, log

MIB = 1 << 20
SIZE = 4096 * MIB
RUN = MIB
STRIDE = 64 * MIB
DATA = (SIZE // STRIDE) * RUN
TIMEOUT = 600


def make_image(path):
    """The sparse image, and its md5 (zeros included)."""
    md5 = hashlib.md5()
    zeros = bytes(STRIDE - RUN)
    with open(path, "wb") as out, open("/dev/urandom", "rb") as random:
        for _ in range(SIZE // STRIDE):
            chunk = random.read(RUN)
            out.write(chunk)
            md5.update(chunk)
            out.seek(STRIDE - RUN, os.SEEK_CUR)
            md5.update(zeros)
        out.truncate(SIZE)
    return md5.hexdigest()


def file_md5(path):
    md5 = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(8 * MIB):
            md5.update(chunk)
    return md5.hexdigest()


def allocated(path):
    return os.stat(path).st_blocks * 512


def timed(argv):
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {result.stderr[-2000:]}")
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("binary")
    binary = binary_arg(parser.parse_args())
    install_sigterm()
    for tool in ("nbdcopy", "qemu-img", "curl"):
        if shutil.which(tool) is None:
            log(f"FAIL: {tool} is not installed (apt-get install libnbd-bin qemu-utils curl)")
            return 1
    work = tempfile.mkdtemp(prefix="ocellus-sparse-")
    nbd_port = free_port()
    server = Server(binary, os.path.join(work, "data"), os.path.join(work, "server.log"),
                    extra_args=["--nbd-listen", f"127.0.0.1:{nbd_port}"])
    try:
        server.start()
        source = os.path.join(work, "sparse.raw")
        expected = make_image(source)
        image = server.api.create("sparse").json()
        image_id = image["id"]
        started = time.monotonic()
        subprocess.run(["curl", "-sf", "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                        "-T", source, f"http://127.0.0.1:{server.port}/v2/images/{image_id}/file"],
                       check=True, timeout=TIMEOUT)
        log(f"uploaded 4 GiB ({DATA // MIB} MiB of data) in {time.monotonic() - started:.1f} s")
        os.unlink(source)

        extents = server.api.call("GET", f"/ocellus/v1/images/{image_id}/extents").json()
        data_runs = [e for e in extents["extents"] if not e["zero"]]
        assert extents["recorded"] and extents["data_bytes"] == DATA, extents["data_bytes"]
        assert [(e["offset"], e["length"]) for e in data_runs] == \
            [(i * STRIDE, RUN) for i in range(SIZE // STRIDE)], data_runs[:3]

        uri = f"nbd://127.0.0.1:{nbd_port}/{image_id}"
        copies = {}
        for name, argv in (
            ("nbdcopy", ["nbdcopy", uri]),
            ("qemu-img convert", ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri]),
        ):
            out = os.path.join(work, name.replace(" ", "-") + ".raw")
            seconds = timed(argv + [out])
            size, used, md5 = os.path.getsize(out), allocated(out), file_md5(out)
            log(f"{name}: {seconds:.2f} s, {used / MIB:.1f} MiB allocated of {size / MIB:.0f} MiB")
            assert size == SIZE and md5 == expected, f"{name}: wrong bytes"
            assert used <= DATA + 16 * MIB, f"{name}: {used} bytes allocated"
            copies[name] = seconds
            os.unlink(out)

        out = os.path.join(work, "download.raw")
        download = timed(["curl", "-sf", "-o", out, f"http://127.0.0.1:{server.port}/v2/images/{image_id}/file"])
        log(f"full download with curl: {download:.2f} s")
        assert file_md5(out) == expected, "the download's bytes"
        os.unlink(out)
        for name, seconds in copies.items():
            assert seconds * 3 <= download, f"{name} took {seconds:.2f} s against {download:.2f} s"
        print(json.dumps({"download_s": round(download, 2),
                          **{f"{name}_s": round(seconds, 2) for name, seconds in copies.items()}}))
        log("PASS")
        return 0
    except AssertionError as error:
        log(f"FAIL: {error}")
        log(server.log_tail())
        return 1
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
