#!/usr/bin/env python3
"""A CVP-like backup archive for `make bench`: tar + gzip -1 (as `cvpi backup` writes one)
of about SIZE bytes.

  make_archive.py OUT SIZE data|images

`data`: half of the archive is a database dump of JSON-like rows (about 6x compressible, so
the archive check inflates about 3.5 bytes for each byte read), half already-compressed
blobs (random bytes). `images`: EOS images are compressed already: random bytes only. The
check's cost depends on how much it inflates; random bytes alone would hide it.
"""
import io
import os
import subprocess
import sys
import tarfile

BLOCK = 1 << 20


def rows(size):
    """About SIZE bytes of dump rows: varied enough that gzip -1 gets about 6x."""
    out = io.StringIO()
    i = 0
    while out.tell() < size:
        out.write(
            '{"device":"JPE%05d","ts":%d,"counter":%d,"state":"up"}\n'
            % (i % 9973, 1700000000 + i, (i * 7919) % 1000003)
        )
        i += 1
    return out.getvalue().encode()[:size]


class Repeating(io.RawIOBase):
    """SIZE bytes cycling through PATTERN (repeats farther apart than gzip's window)."""

    def __init__(self, pattern, size):
        self.pattern, self.left, self.at = pattern, size, 0

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self.left, len(self.pattern) - self.at)
        buf[:n] = self.pattern[self.at : self.at + n]
        self.at = (self.at + n) % len(self.pattern)
        self.left -= n
        return n


class Random(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self.left, BLOCK)
        buf[:n] = os.urandom(n)
        self.left -= n
        return n


def member(tar, name, size, source):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1700000000
    tar.addfile(info, io.BufferedReader(source, BLOCK))


def main():
    out, size, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(out, "wb") as sink:
        gzip = subprocess.Popen(["gzip", "-1"], stdin=subprocess.PIPE, stdout=sink)
        with tarfile.open(fileobj=gzip.stdin, mode="w|", bufsize=BLOCK) as tar:
            if kind == "data":
                dump = size * 3
                member(tar, "cvp/database.json", dump, Repeating(rows(64 << 20), dump))
                member(tar, "cvp/blobs.bin", size // 2, Random(size // 2))
            else:
                member(tar, "images/EOS.swi", size, Random(size))
        gzip.stdin.close()
        if gzip.wait() != 0:
            sys.exit("gzip failed")


if __name__ == "__main__":
    main()
