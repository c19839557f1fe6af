"""Write the small in-repository excerpts (``data/``) from full copies of the public data sets.

    python scripts/make_data_excerpts.py ../shared/data data

Takes the first rows of each file, unchanged (see ``data/README.md`` for the sources and licenses). The gzip file is
written with a zero timestamp, so that re-running it gives byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

TEXT_CHARACTERS = 250_000  # cut at the last paragraph break before this
JSONL_ROWS = {"gsm8k/train.jsonl": 600, "gsm8k/test.jsonl": 150,
              **{f"glue/{task}/{split}.jsonl": rows for task in ("sst2", "rte", "mrpc", "stsb")
                 for split, rows in (("train", 400), ("dev", 100))}}
GZIP_ROWS = {"hh-rlhf/harmless-base-test.jsonl.gz": 400}
LICENSES = ("gsm8k/LICENSE", "hh-rlhf/LICENSE")


def first_lines(path: Path, count: int, opener=open) -> str:
    with opener(path, "rt", encoding="utf-8") as handle:
        return "".join(line for _, line in zip(range(count), handle))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder with the full data sets (the layout of ../shared/data)")
    parser.add_argument("target", type=Path, help="the repository's data/ folder")
    args = parser.parse_args(argv)

    text = (args.source / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    out = args.target / "tinyshakespeare" / "input.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text[:text.rfind("\n\n", 0, TEXT_CHARACTERS) + 1], encoding="utf-8")
    for relative, rows in JSONL_ROWS.items():
        out = args.target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(first_lines(args.source / relative, rows), encoding="utf-8")
    for relative, rows in GZIP_ROWS.items():
        out = args.target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(out, "wb", mtime=0) as handle:
            handle.write(first_lines(args.source / relative, rows, opener=gzip.open).encode("utf-8"))
    for relative in LICENSES:
        shutil.copyfile(args.source / relative, args.target / relative)


if __name__ == "__main__":
    main()
