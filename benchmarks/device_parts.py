"""Carry a file that is too large for one transfer to a machine in two parts, and rebuild it there.

    python benchmarks/device_parts.py split FILE OUT_DIR --first-mib 56    # part1, part2, SHA256 in OUT_DIR
    python benchmarks/device_parts.py store OUT_DIR/part1 STORE_DIR         # call 1: keep part 1 outside the checkout
    python benchmarks/device_parts.py join STORE_DIR/part1 OUT_DIR/part2 OUT_DIR/SHA256 FILE   # call 2

``split`` writes the first --first-mib MiB of FILE as ``part1``, the rest as ``part2`` and the whole file's sha256
with its name as ``SHA256``. ``join`` concatenates the parts into FILE and checks the sha256; a missing part 1 (the
machine was given back between the two calls) or a wrong checksum is one line on stderr and exit code 3.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

MIB = 2**20
CHUNK = 8 * MIB


class PartsError(RuntimeError):
    """A part is missing or the rebuilt file does not match its checksum (one line)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def split(path: Path, out_dir: Path, first_bytes: int) -> tuple[Path, Path, Path]:
    """Write part1 (the first `first_bytes` bytes), part2 (the rest) and SHA256 ("<hex>  <name>") into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    if not 0 < first_bytes < size:
        raise PartsError(f"{path}: {size} bytes; the first part must hold between 1 and {size - 1} bytes")
    p1, p2, sums = out_dir / "part1", out_dir / "part2", out_dir / "SHA256"
    with open(path, "rb") as src, open(p1, "wb") as a, open(p2, "wb") as b:
        left = first_bytes
        while left:
            block = src.read(min(CHUNK, left))
            a.write(block)
            left -= len(block)
        shutil.copyfileobj(src, b, CHUNK)
    sums.write_text(f"{sha256(path)}  {path.name}\n")
    return p1, p2, sums


def store(part1: Path, store_dir: Path) -> Path:
    """Copy part 1 into `store_dir` (outside the checkout, so that it survives until the next call)."""
    if not part1.is_file():
        raise PartsError(f"{part1}: not found (carry it with this call)")
    store_dir.mkdir(parents=True, exist_ok=True)
    target = store_dir / "part1"
    shutil.copyfile(part1, target)
    return target


def join(part1: Path, part2: Path, sums: Path, out: Path) -> Path:
    """Concatenate the parts into `out` and check the whole file's sha256 (PartsError, one line, otherwise)."""
    for p, hint in ((part1, "the machine was given back after call 1: run the store call again, then this one"),
                    (part2, "carry it with this call"), (sums, "carry it with this call")):
        if not p.is_file():
            raise PartsError(f"{p}: not found ({hint})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as dst:
        for p in (part1, part2):
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
    want = sums.read_text().split()[0]
    got = sha256(out)
    if got != want:
        out.unlink()
        raise PartsError(f"{out}: sha256 {got[:12]}... does not match {sums} ({want[:12]}...): part 1 or part 2 "
                         f"is from another file or was cut short")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("file", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--first-mib", type=float, default=56.0)
    t = sub.add_parser("store")
    t.add_argument("part1", type=Path)
    t.add_argument("store_dir", type=Path)
    j = sub.add_parser("join")
    j.add_argument("part1", type=Path)
    j.add_argument("part2", type=Path)
    j.add_argument("sums", type=Path)
    j.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "split":
            for p in split(args.file, args.out_dir, int(args.first_mib * MIB)):
                print(f"{p}  {p.stat().st_size / MIB:.1f} MiB")
        elif args.cmd == "store":
            p = store(args.part1, args.store_dir)
            print(f"stored {p} ({p.stat().st_size / MIB:.1f} MiB)")
        else:
            p = join(args.part1, args.part2, args.sums, args.out)
            print(f"rebuilt {p} ({p.stat().st_size / MIB:.1f} MiB), sha256 ok")
    except (PartsError, OSError) as exc:
        print(f"device_parts: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
