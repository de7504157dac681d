#!/usr/bin/env python3
"""Image bytes through an S3 store against the same through the data directory, in one run.

    python3 bench/s3.py --s3-env DIR/s3.env [--rounds N] [--size-mib M] [--binary PATH]

Starts one ocellus (release build unless --binary) with two stores, `fs` (the data directory)
and `s3` (a bucket on the engine that `tests/s3/ceph-rgw.sh up` or `tests/s3/garage.sh up`
brought up, described by its s3.env), and alternates round by round:

- upload: a new random file (`curl -T`, input in the page cache) to each store in turn
  (`X-Image-Meta-Store`); MB/s, and the server's peak RSS during the S3 uploads;
- download: a full, verified download of each image in turn; MB/s;
- the engine's own limit, in the same rounds: the same file PUT to the bucket and GET back
  directly (one SigV4 request each, no ocellus in between).

Prints every figure, the medians, the S3/local ratios and ocellus-through-S3 against the
engine's own rates. The engine's layout (how many
nodes, replicas, disks) decides the S3 figures: say which one when quoting them.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def env_value(path, name):
    for line in Path(path).read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit(f"{name} is missing from {path}")


class Direct:
    """The engine without ocellus: one object PUT and GET with AWS SigV4 (unsigned payload),
    1 MiB at a time, for the engine's own rates in the same run."""

    def __init__(self, env):
        self.url = urllib.parse.urlsplit(env_value(env, "S3_ENDPOINT"))
        self.bucket = env_value(env, "S3_BUCKET")
        self.region = env_value(env, "S3_REGION")
        self.access = env_value(env, "S3_ACCESS_KEY")
        self.secret = env_value(env, "S3_SECRET_KEY")

    def headers(self, method, path, extra=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": self.url.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
        headers.update(extra or {})
        names = sorted(headers)
        canonical = "\n".join([method, path, "", "".join(f"{name}:{headers[name]}\n" for name in names),
                               ";".join(names), "UNSIGNED-PAYLOAD"])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers

    def call(self, method, key, body=None, length=None):
        path = urllib.parse.quote(f"/{self.bucket}/{key}", safe="/-_.~")
        extra = {"content-length": str(length)} if length is not None else None
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=300, blocksize=bench.MIB)
        started = time.perf_counter()
        connection.request(method, path, body=body, headers=self.headers(method, path, extra))
        response = connection.getresponse()
        received = 0
        while chunk := response.read(bench.MIB):
            received += len(chunk)
        connection.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {key}: HTTP {response.status}")
        return received, time.perf_counter() - started

    def put(self, key, path):
        size = os.path.getsize(path)
        with open(path, "rb") as body:
            _, seconds = self.call("PUT", key, body, size)
        return size / seconds / bench.MB

    def get(self, key):
        received, seconds = self.call("GET", key)
        return received / seconds / bench.MB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--s3-env", required=True, help="the s3.env of a running engine")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each flow (default 3)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each file (default 1024)")
    parser.add_argument("--binary", help="ocellus binary (default: build and use the release one)")
    args = parser.parse_args()

    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    else:
        bench.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=bench.ROOT)
    work = Path(tempfile.mkdtemp(prefix="ocellus-s3-bench-"))
    (work / "access").write_text(env_value(args.s3_env, "S3_ACCESS_KEY") + "\n")
    (work / "secret").write_text(env_value(args.s3_env, "S3_SECRET_KEY") + "\n")
    prefix = f"bench-{work.name}/"
    config = work / "stores.toml"
    config.write_text(f"""default_store = "fs"
[stores.fs]
type = "file"
[stores.s3]
type = "s3"
endpoint = "{env_value(args.s3_env, 'S3_ENDPOINT')}"
bucket = "{env_value(args.s3_env, 'S3_BUCKET')}"
region = "{env_value(args.s3_env, 'S3_REGION')}"
prefix = "{prefix}"
access_key_file = '{work / "access"}'
secret_key_file = '{work / "secret"}'
removal_grace = "10s"
""")
    data_dir = work / "data"
    data_dir.mkdir()
    server = bench.Server(data_dir, extra=["--config", str(config)])
    direct = Direct(args.s3_env)
    direct_key = f"{prefix}direct.bin"
    direct_put, direct_get = [], []
    stores = ["fs", "s3"]
    uploads = {store: [] for store in stores}
    downloads = {store: [] for store in stores}
    images = {store: [] for store in stores}
    peak_rss = 0.0
    try:
        for round_index in range(args.rounds):
            path = work / "random.bin"
            with open("/dev/urandom", "rb") as source, open(path, "wb") as target:
                for _ in range(args.size_mib):
                    target.write(source.read(bench.MIB))
            for store in stores:
                image_id = bench.create_image(bench.connect(server), name=f"{store}-{round_index}")
                with bench.RssPeak(server) as rss:
                    uploads[store].append(
                        bench.curl_upload(server, image_id, path, headers=[f"X-Image-Meta-Store: {store}"])
                    )
                if store == "s3":
                    peak_rss = max(peak_rss, rss.peak_mib)
                images[store].append(image_id)
            bench.warm(path)
            direct_put.append(direct.put(direct_key, path))
            direct_get.append(direct.get(direct_key))
            path.unlink()
        for round_index in range(args.rounds):
            for store in stores:
                image_id = images[store][round_index]
                downloads[store].append(bench.curl_download(f"{server.base}/v2/images/{image_id}/file"))
        direct.call("DELETE", direct_key)
        connection = bench.connect(server)
        for store in stores:
            for image_id in images[store]:
                bench.request(connection, "DELETE", f"/v2/images/{image_id}")
        # The bucket's copies go after their grace (10 s): let the sweep take them, so that
        # runs do not fill the engine.
        time.sleep(15)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.size_mib} MiB per image, {args.rounds} rounds; engine from {args.s3_env}")
    for store in stores:
        print(f"{store:>3} upload MB/s   {[round(rate) for rate in uploads[store]]}  "
              f"median {statistics.median(uploads[store]):.0f}")
        print(f"{store:>3} download MB/s {[round(rate) for rate in downloads[store]]}  "
              f"median {statistics.median(downloads[store]):.0f}")
    print(f"engine PUT MB/s  {[round(rate) for rate in direct_put]}  median {statistics.median(direct_put):.0f}")
    print(f"engine GET MB/s  {[round(rate) for rate in direct_get]}  median {statistics.median(direct_get):.0f}")
    print(f"through ocellus / engine alone: upload "
          f"{statistics.median(uploads['s3']) / statistics.median(direct_put):.2f}, download "
          f"{statistics.median(downloads['s3']) / statistics.median(direct_get):.2f}")
    up = statistics.median(uploads["s3"]) / statistics.median(uploads["fs"])
    down = statistics.median(downloads["s3"]) / statistics.median(downloads["fs"])
    print(f"s3 / local: upload {up:.2f}, download {down:.2f}")
    print(f"server peak RSS during the S3 uploads: {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
