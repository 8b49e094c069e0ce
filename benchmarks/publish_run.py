"""Copy a finished run's figures and JSON into a results folder, without this machine's paths.

    python benchmarks/publish_run.py RUN results/acgan-NAME

Takes the files README and docs/RESULTS.md cite (the epoch figures ``E1``, ``E10``, ``E20``
and the last one, the curves, the confusion matrix, ``config.json``, ``metrics.json``,
``eval.json``; whichever the run has), never a checkpoint or model file. In the JSON, the
values of ``data_dir``, ``out`` and ``source`` (where the data and the run lived) become null,
and the copy is refused if any other string still holds an absolute path.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

FIGURES = ("loss.png", "accuracy.png", "confusion.png", "samples.png", "reconstructions.png")
JSON_FILES = ("config.json", "metrics.json", "eval.json")
PATH_KEYS = {"data_dir", "out", "source"}
EPOCH_FIGURE = re.compile(r"E(\d+)\.png")
ABSOLUTE = re.compile(r"(^|[\s'\"=(])(/[A-Za-z0-9_.-]+){2,}|[A-Za-z]:\\")


def epoch_figures(run: Path) -> list[Path]:
    """E1, E10, E20 and the last epoch's figure, where the run has them."""
    numbered = {int(m.group(1)): p for p in run.glob("E*.png") if (m := EPOCH_FIGURE.fullmatch(p.name))}
    if not numbered:
        return []
    keep = {1, 10, 20, max(numbered)}
    return [numbered[e] for e in sorted(keep) if e in numbered]


def scrub(value, where: str = ""):
    """``value`` with the path keys set to None; raises ValueError naming any other absolute path."""
    if isinstance(value, dict):
        return {k: (None if k in PATH_KEYS else scrub(v, f"{where}.{k}")) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and ABSOLUTE.search(value):
        raise ValueError(f"{where or 'value'} holds a path of this machine ({value!r}): remove it before publishing")
    return value


def publish(run: Path, dest: Path) -> list[Path]:
    """Copy ``run``'s figures and scrubbed JSON into ``dest``; returns the files written."""
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(f"{run} has no metrics.json: pass a run folder of cifargen train")
    documents = {name: scrub(json.loads((run / name).read_text()), name) for name in JSON_FILES
                 if (run / name).is_file()}  # all checked before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in [*epoch_figures(run), *(run / name for name in FIGURES if (run / name).is_file())]:
        written.append(Path(shutil.copy2(source, dest / source.name)))
    for name, document in documents.items():
        (dest / name).write_text(json.dumps(document, indent=2) + "\n")
        written.append(dest / name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder of cifargen train")
    parser.add_argument("dest", type=Path, help="the results folder to write, e.g. results/acgan")
    args = parser.parse_args(argv)
    try:
        written = publish(args.run, args.dest)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
