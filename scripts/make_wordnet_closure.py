"""Write ``edgemvp/data/synsets/_closure.json``: the WordNet closures of the shipped class maps' synsets.

For every synset named in ``edgemvp/data/synsets/<dataset>.json`` and every hypernym above it, the table holds
what nltk's Wu-Palmer needs (offset, part of speech, ``min_depth``, ``max_depth``, and the shortest hypernym
path length to each hypernym), so ranking by the shipped classes never loads the WordNet reader
(:class:`edgemvp.data.wordnet.ClosureStore`). The output is deterministic (sorted keys, one synset a line).

Run it from the repository root after changing a shipped class map (WordNet 3.0 must be set up, as for
``edgemvp wordnet setup``)::

    .venv/bin/python scripts/make_wordnet_closure.py            # rewrite the table
    .venv/bin/python scripts/make_wordnet_closure.py --check    # exit 1 if the shipped table is out of date

``tests/test_similarity_closure.py`` fails when the shipped table is not what this script writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgemvp.data.wordnet import (CLOSURE_FILE, WORDNET_VERSION, _PLAIN_NAME, closure_table,  # noqa: E402
                                  render_closure_table)

SYNSETS = ROOT / "edgemvp" / "data" / "synsets"


def shipped_names(folder: Path = SYNSETS) -> list[str]:
    """Every synset named by a shipped class map (``<dataset>.json``), sorted, once each."""
    import json

    names: set[str] = set()
    for path in sorted(folder.glob("*.json")):
        if _PLAIN_NAME.fullmatch(path.stem):  # a dataset's map, not the closure table itself
            names.update(json.loads(path.read_text()).values())
    return sorted(names)


def table_text(folder: Path = SYNSETS) -> tuple[str, int]:
    """The closure table's text for the class maps in ``folder``, and how many synsets it holds.

    Raises:
        SystemExit: The WordNet nltk reads is not WordNet 3.0.
    """
    table = closure_table(shipped_names(folder))
    if table["wordnet_version"] != WORDNET_VERSION:
        raise SystemExit(f"WordNet {table['wordnet_version']} found; the table must be of WordNet {WORDNET_VERSION}")
    return render_closure_table(table), len(table["synsets"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the shipped table")
    args = parser.parse_args()
    text, count = table_text()
    target = SYNSETS / CLOSURE_FILE
    if args.check:
        same = target.is_file() and target.read_text() == text
        print(f"{target.relative_to(ROOT)} is {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    target.write_text(text)
    print(f"wrote {target.relative_to(ROOT)} ({count} synsets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
