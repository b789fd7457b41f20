"""Raw write+fsync rate of a disk: the ceiling of commits per second with ``fsync = true``.

A spool commit with ``synchronous=FULL`` appends to the WAL and syncs it once, so this rate
is how many commits per second the disk allows whatever the software does; group commit is
how accepts per second go above it. Print it beside the spool's figures.

    python -m bench.fsync_rate [DIR] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

BLOCK = 4096  # one WAL page
RING = 256  # blocks; rewritten in a ring like a WAL after a checkpoint (1 MiB)


def fsync_rate(path: str, seconds: float = 2.0) -> float:
    """Writes of 4 KiB, each followed by fsync, per second, in directory ``path``
    (or beside the file ``path``) for about ``seconds``."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    fd, name = tempfile.mkstemp(prefix=".fsync-rate-", dir=directory)
    try:
        block = os.urandom(BLOCK)
        n = 0
        start = now = time.perf_counter()
        deadline = start + seconds
        while now < deadline:
            os.pwrite(fd, block, (n % RING) * BLOCK)
            os.fsync(fd)
            n += 1
            now = time.perf_counter()
        return n / (now - start) if n else 0.0
    finally:
        os.close(fd)
        os.unlink(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=".", help="a directory on the disk to test")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    rate = fsync_rate(args.path, args.seconds)
    print(f"{rate:,.0f} write+fsync/s in {os.path.abspath(args.path)}")


if __name__ == "__main__":
    main()
