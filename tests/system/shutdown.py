#!/usr/bin/env python3
"""Start and stop under a service manager's eyes (issue 10).

Plays systemd's part for a Type=notify unit: binds a datagram socket, hands it
to the server as NOTIFY_SOCKET and checks that

- READY=1 comes once the store is open and the listener bound (the next
  request is answered at once);
- on SIGTERM, STOPPING=1 comes, an upload that keeps sending finishes (204,
  image active), an upload that stalls is cut after --shutdown-timeout, and the
  process exits 0 within that bound;
- after the exit, the cut upload's image is queued again and no temp file is
  left: `ocellus check` on the stopped data directory lists nothing left over.

Usage: shutdown.py PATH_TO_OCELLUS_BINARY
"""

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from common import Server, binary_arg, files_under, install_sigterm, log, run_check

GRACE = 3  # --shutdown-timeout, seconds
MIB = 1 << 20


def receive(sock, wanted, deadline):
    """Waits for a datagram containing `wanted`; returns it or raises."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except socket.timeout:
            break
        if wanted in message.split("\n"):
            return message
    raise AssertionError(f"no {wanted} from the server")


def start_upload(port, image_id, total, first):
    """Opens an upload of `total` bytes and sends `first` of them; returns the socket."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n").encode())
    conn.sendall(b"\x01" * first)
    return conn


def status_of(response_bytes):
    line = response_bytes.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary")
    binary = binary_arg(parser.parse_args())
    install_sigterm()
    work = tempfile.mkdtemp(prefix="ocellus-shutdown-")
    notify_path = os.path.join(work, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    data_dir = os.path.join(work, "data")
    server = Server(binary, data_dir, os.path.join(work, "server.log"),
                    extra_args=["--shutdown-timeout", str(GRACE)], env={"NOTIFY_SOCKET": notify_path})
    failures = []
    try:
        server.launch()
        ready = receive(notify, "READY=1", time.monotonic() + 30)
        log(f"notified: {ready!r}")
        health = server.api.healthcheck(timeout=2)
        if health.status != 200:
            failures.append(f"after READY=1, /healthcheck answered {health.status}")

        api = server.api
        finishing = api.create("finishing").json()["id"]
        stalled = api.create("stalled").json()["id"]
        total = 32 * MIB
        keeps_sending = start_upload(server.port, finishing, total, 4 * MIB)
        stalls = start_upload(server.port, stalled, total, 4 * MIB)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(api.get(i).json()["status"] == "saving" for i in (finishing, stalled)):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the uploads never reached saving")

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        receive(notify, "STOPPING=1", signalled + 5)
        # The first upload carries on after the signal and must be allowed to finish.
        reply = {}

        def finish():
            try:
                keeps_sending.sendall(b"\x01" * (total - 4 * MIB))
                reply["data"] = keeps_sending.recv(4096)
            except OSError as error:
                reply["error"] = error
        sender = threading.Thread(target=finish, daemon=True)
        sender.start()
        sender.join(timeout=GRACE + 20)
        try:
            code = server.proc.wait(timeout=GRACE + 20)
        except Exception:
            failures.append(f"the server did not exit within {GRACE + 20} s of SIGTERM")
            server.proc.kill()
            code = server.proc.wait(timeout=30)
        took = time.monotonic() - signalled
        log(f"exited with {code} {took:.1f} s after SIGTERM")
        if code != 0:
            failures.append(f"exit status {code}")
        if took > GRACE + 5:
            failures.append(f"took {took:.1f} s to stop with --shutdown-timeout {GRACE}")
        if status_of(reply.get("data", b"")) != 204:
            failures.append(f"the upload that kept sending got {reply}")
        stalls.close()
        keeps_sending.close()

        temps = files_under(os.path.join(data_dir, "tmp"))
        if temps:
            failures.append(f"temp files left: {temps}")
        code, output, _ = run_check(binary, data_dir)
        log(output)
        if code != 0 or "leftover" in output:
            failures.append(f"check after shutdown: exit {code}: {output}")
        # Back up: the finished upload is active, the cut one queued.
        server.start()
        states = {i: api.get(i).json()["status"] for i in (finishing, stalled)}
        if states != {finishing: "active", stalled: "queued"}:
            failures.append(f"after restart: {states}")
    finally:
        server.stop()
        notify.close()
        if failures:
            log("server log tail:\n" + server.log_tail())
        shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        log(f"FAIL: {failure}")
    if failures:
        sys.exit(1)
    log("PASS: READY=1 when serving, STOPPING=1 on SIGTERM, in-flight upload finished, stalled one cut and queued")


if __name__ == "__main__":
    main()
