#!/usr/bin/env python3
"""Put a generated report into a markdown file between two marker lines.

Usage: splice_section.py FILE NAME REPORT

The text between `<!-- NAME: begin -->` and `<!-- NAME: end -->` in FILE is replaced by the
contents of REPORT; when the markers are not there, they are appended with the report. The
text around the markers (what the figures mean, the verdicts) is left as it is, so a re-run
refreshes the figures without touching what people wrote about them.
"""

import sys


def splice(text: str, name: str, report: str) -> str:
    begin = f"<!-- {name}: begin -->"
    end = f"<!-- {name}: end -->"
    block = f"{begin}\n{report.rstrip()}\n{end}"
    start = text.find(begin)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    stop = text.find(end, start)
    if stop < 0:
        raise SystemExit(f"splice_section: {begin} has no {end} after it")
    return text[:start] + block + text[stop + len(end):]


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[2])
    path, name, report_path = sys.argv[1:]
    with open(report_path, encoding="utf-8") as f:
        report = f.read()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(splice(text, name, report))


if __name__ == "__main__":
    main()
