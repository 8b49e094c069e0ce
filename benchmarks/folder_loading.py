"""Time loading an image folder: the first run decodes every file (worker processes), the second
reads the cache. Prints one JSON line per run.

    python benchmarks/folder_loading.py FOLDER [--image-size 32] [--cache DIR]

FOLDER is root/<class>/<images> or root/train/... and root/test/...; the cache goes to a fresh
folder (default: a temporary one), so the first run really decodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--cache", help="cache folder (default: a new temporary folder)")
    args = parser.parse_args()
    os.environ["CIFARGEN_CACHE"] = args.cache or tempfile.mkdtemp(prefix="cifargen-cache-")

    from cifargen.data import load_splits  # after CIFARGEN_CACHE is set

    for run in ("decode", "cached"):
        start = time.perf_counter()
        train, test = load_splits(args.folder, image_size=args.image_size, progress=False)
        seconds = time.perf_counter() - start
        print(json.dumps({"run": run, "seconds": round(seconds, 2), "images": len(train) + len(test),
                          "image_size": args.image_size, "from_cache": bool(train.info.get("from_cache")),
                          "cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
