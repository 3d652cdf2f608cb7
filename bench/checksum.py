"""What checking the index file costs: XXH3-128 (engine.integrity) against hashlib's SHA-256, on a file the
size of the 1 M-face index (~600 MB, in the page cache as it is right after a save or a load).

Run: PYTHONPATH=. python bench/checksum.py [MB]    (default 600; writes a temporary file of that size)
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from engine.integrity import file_checksum


def sha256_file(path: Path) -> str:
    """SHA-256 with an 8 MB buffer."""
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def main() -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.bin"
        with open(path, "wb") as fh:
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))
        for name, fn in (("xxh3_128 (engine.integrity)", file_checksum), ("sha256 (hashlib)", sha256_file)):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(path)
                times.append(time.perf_counter() - t)
            print(f"{name:28s} {mb} MB: best {min(times):.2f} s, median {sorted(times)[1]:.2f} s "
                  f"({mb / min(times):.0f} MB/s)")


if __name__ == "__main__":
    main()
