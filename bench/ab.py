#!/usr/bin/env python3
"""A/B comparison of ocellus builds on the byte paths.

    python3 bench/ab.py [--rounds N] [--size-mib M] BINARY [BINARY ...]

Starts every binary on loopback, each with its own fresh data directory, and
alternates between them round by round, so that slow drifts of the machine
(this VM's loopback and disk rates move from minute to minute) hit all of them
alike:

- upload: each round uploads a new random file (`curl -T`, input already in
  the page cache) to every binary in turn; MB/s;
- download: each round fetches the sendfile(2) reference and then a full,
  verified download from every binary in turn; ratio to that reference.

Prints each binary's rates and medians. Build variants by copying
target/release/ocellus aside between builds.
"""

import argparse
import statistics
import sys
import tempfile
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="+", help="ocellus binaries to compare")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each flow (default 5)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each file (default 1024)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ocellus-ab-"))
    servers = []
    try:
        for index, binary in enumerate(args.binaries):
            bench.BIN = Path(binary).resolve()
            data_dir = work / f"data-{index}"
            data_dir.mkdir()
            servers.append(bench.Server(data_dir))

        uploads = {binary: [] for binary in args.binaries}
        images = {}
        for round_index in range(args.rounds):
            path = work / f"random-{round_index}.bin"
            with open("/dev/urandom", "rb") as source, open(path, "wb") as target:
                for _ in range(args.size_mib):
                    target.write(source.read(bench.MIB))
            for binary, server in zip(args.binaries, servers):
                image_id = bench.create_image(bench.connect(server))
                uploads[binary].append(bench.curl_upload(server, image_id, path))
                images[binary] = image_id
            if round_index < args.rounds - 1:
                path.unlink()

        ratios = {binary: [] for binary in args.binaries}
        reference = bench.SendfileServer(path)
        try:
            for binary, server in zip(args.binaries, servers):
                # The first read of a fresh upload comes from disk; warm each one once.
                bench.curl_download(f"{server.base}/v2/images/{images[binary]}/file")
            for _ in range(args.rounds):
                for binary, server in zip(args.binaries, servers):
                    limit = bench.curl_download(reference.url)
                    ours = bench.curl_download(f"{server.base}/v2/images/{images[binary]}/file")
                    ratios[binary].append(ours / limit)
        finally:
            reference.close()

        for binary in args.binaries:
            print(f"{binary}")
            print(f"  upload MB/s      {[round(rate) for rate in uploads[binary]]}  "
                  f"median {statistics.median(uploads[binary]):.0f}")
            print(f"  download / sendfile {[round(ratio, 2) for ratio in ratios[binary]]}  "
                  f"median {statistics.median(ratios[binary]):.3f}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
