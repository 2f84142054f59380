"""Rebuild seeds/papers.jsonl from the text of the seed papers page.

Usage: python scripts/build_seeds.py PATH/TO/000_37635addabdef39f.txt > seeds/papers.jsonl

The page text is two banner lines, then for each paper a title line and an abstract line; the
first title is glued to the page's "Subscribe" button label.
"""

from __future__ import annotations

import json
import sys

from digest.papers import PaperIn, paper_to_json


def main(path: str) -> None:
    lines = [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    body = lines[2:]
    body[0] = body[0].removeprefix("Subscribe")
    if len(body) % 2:
        raise SystemExit(f"expected title/abstract pairs, got {len(body)} lines")
    for title, abstract in zip(body[0::2], body[1::2], strict=True):
        paper = PaperIn(title=title, abstract=abstract, source="seed")
        print(json.dumps(paper_to_json(paper), ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1])
