#!/usr/bin/env python3
"""QEMU boots straight from the NBD export (issue 16).

Makes a 1 MiB disk whose boot sector writes "ocellus nbd boot ok" to the first serial port
and halts, converts it to a compressed qcow2 with qemu-img, uploads that, and boots
qemu-system-x86_64 (software emulation) with the README's two drive lines:

- `-drive file=nbd://HOST:PORT/<id>,format=qcow2`: QEMU decodes the qcow2 itself;
- `-drive file=nbd://HOST:PORT/<id>:raw,format=raw`: the server's raw view of it;

each must print the boot sector's line on the serial port within 60 s. qemu-system comes from
tests/system/qemu-system.sh (Debian's package unpacked, not installed), or from PATH.

Usage: boot_nbd.py PATH_TO_OCELLUS_BINARY
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Server, binary_arg, free_port, install_sigterm, log

ROOT = Path(__file__).resolve().parent.parent.parent
MESSAGE = b"ocellus nbd boot ok"


def boot_sector():
    """cli; ds = 0; cld; dx = COM1; si = message; print bytes until NUL; hlt forever."""
    code = bytes([
        0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0xFC, 0xBA, 0xF8, 0x03, 0xBE, 0x17, 0x7C,
        0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8, 0xF4, 0xEB, 0xFD,
    ])
    assert len(code) == 0x17, "the message must start where `mov si` points"
    sector = code + MESSAGE + b"\r\n\0"
    return sector + bytes(510 - len(sector)) + b"\x55\xaa"


def qemu_system():
    unpacked = ROOT / "target" / "qemu-system"
    subprocess.run(["bash", str(ROOT / "tests" / "system" / "qemu-system.sh"), str(unpacked)],
                   check=False, timeout=600, stdout=subprocess.DEVNULL)
    wrapper = unpacked / "qemu-system-x86_64"
    if wrapper.exists():
        return str(wrapper)
    return shutil.which("qemu-system-x86_64")


def boot(qemu, drive, seconds=60):
    """Boots with `drive`; true once the serial port printed the message."""
    process = subprocess.Popen(
        [qemu, "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
         "-machine", "accel=kvm:tcg", "-m", "32", "-snapshot", "-drive", drive],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and MESSAGE not in seen:
            chunk = process.stdout.read()
            if chunk:
                seen += chunk
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.1)
    finally:
        process.kill()
        process.wait(timeout=30)
    log(f"  {drive}: {seen.decode(errors='replace').strip()[-200:]!r}")
    return MESSAGE in seen


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("binary")
    binary = binary_arg(parser.parse_args())
    install_sigterm()
    qemu = qemu_system()
    if qemu is None or shutil.which("qemu-img") is None:
        log("FAIL: qemu-system-x86_64 could not be unpacked (tests/system/qemu-system.sh) or qemu-img is missing")
        return 1
    work = tempfile.mkdtemp(prefix="ocellus-boot-")
    nbd_port = free_port()
    server = Server(binary, os.path.join(work, "data"), os.path.join(work, "server.log"),
                    extra_args=["--nbd-listen", f"127.0.0.1:{nbd_port}"])
    try:
        raw = os.path.join(work, "boot.raw")
        with open(raw, "wb") as disk:
            disk.write(boot_sector())
            disk.truncate(1 << 20)
        image = os.path.join(work, "boot.qcow2")
        subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, image],
                       check=True, timeout=60)
        server.start()
        image_id = server.api.call("POST", "/v2/images", {"name": "boot", "disk_format": "qcow2",
                                                          "container_format": "bare"}).json()["id"]
        with open(image, "rb") as data:
            status = server.api.upload(image_id, data.read()).status
        assert status == 204, f"upload answered {status}"
        failures = []
        for drive in (f"file=nbd://127.0.0.1:{nbd_port}/{image_id},format=qcow2,if=virtio",
                      f"file=nbd://127.0.0.1:{nbd_port}/{image_id}:raw,format=raw,if=virtio"):
            if not boot(qemu, drive):
                failures.append(drive)
        assert not failures, f"no boot message from {failures}"
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
