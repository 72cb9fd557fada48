"""The cost of hashing an image folder's file contents for the plan's identity
(datamodules/identity.py): the first hash of every file, and a rerun's check, which stats
the files and takes each hash from the cache.

    python benchmarks/identity_hash.py                 # 10,000 PNG files of 40 x 30 pixels
    python benchmarks/identity_hash.py --files 2000

Writes the files and the hash cache under a temporary folder, deleted afterwards. Run it
with nothing else heavy running: the times are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args(argv)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        os.environ["SNN_MIA_CACHE_DIR"] = str(Path(tmp) / "cache")
        from datamodules.identity import folder_identity

        files = []
        for i in range(args.files):
            rel = Path(f"class_{i % args.classes}") / f"img_{i:05d}.png"
            (root / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (i % 256, (i // 256) % 256, 7)).save(root / rel)
            files.append(rel)
        total = sum((root / f).stat().st_size for f in files)
        counts = [args.classes and args.files // args.classes] * args.classes

        def timed(contents: bool) -> tuple[float, dict]:
            start = time.perf_counter()
            ident = folder_identity(root, files, [f"class_{c}" for c in range(args.classes)], counts,
                                    contents=contents)
            return time.perf_counter() - start, ident

        names_only, _ = timed(False)
        first, a = timed(True)
        again, b = timed(True)
        assert a == b
        print(f"{args.files} files, {total / 1e6:.1f} MB")
        print(f"names and sizes only (stat):      {names_only * 1e3:8.0f} ms")
        print(f"first content hash (read all):    {first * 1e3:8.0f} ms")
        print(f"rerun, hashes from the cache:     {again * 1e3:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
