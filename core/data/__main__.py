"""Command line: ``python -m core.data describe SOURCE [--json]`` prints a dataset's card."""
from __future__ import annotations

import argparse
import json
import sys

from . import DataError, DatasetCard, list_builtin, load_dataset


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 when the data cannot be read)."""
    parser = argparse.ArgumentParser(prog="python -m core.data", description="Inspect steerboard datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    describe = sub.add_parser("describe", help="load a dataset and print its card")
    describe.add_argument("source", help=f"a path or one of: {', '.join(list_builtin())}")
    describe.add_argument("--json", action="store_true", help="print the card as JSON")
    describe.add_argument("--seed", type=int, default=0)
    describe.add_argument("--limit-per-class", type=int, default=None)
    describe.add_argument("--rho", type=float, default=0.99, help="bias of the biased-digits sets")
    describe.add_argument("--allow-download", action="store_true", help="download torchvision sets if missing")
    describe.add_argument("--root", default=None, help="folder of a torchvision set")
    args = parser.parse_args(argv)

    try:
        ds = load_dataset(
            args.source, seed=args.seed, limit_per_class=args.limit_per_class, rho=args.rho,
            allow_download=args.allow_download, root=args.root,
        )
    except (DataError, OSError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(ds.card.to_dict(), indent=2) if args.json else format_card(ds.card))
    return 0


def format_card(card: DatasetCard) -> str:
    """The card as a plain-text table: one row per class, one column per split."""
    splits = list(card.splits)
    width = max([len("class"), len("total"), *(len(c) for c in card.classes)])
    lines = [
        f"{card.name}: {card.total} images of shape {list(card.image_shape)}, {len(card.classes)} classes",
        f"source:  {card.source}",
        f"license: {card.license}",
        "",
        f"{'class':<{width}}" + "".join(f"{s:>14}" for s in splits),
    ]
    for cls in card.classes:
        lines.append(f"{cls:<{width}}" + "".join(f"{card.splits[s][cls]:>14}" for s in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(card.splits[s].values()):>14}" for s in splits))
    lines += [f"note: {n}" for n in card.notes]
    if card.skipped:
        lines.append(f"skipped {len(card.skipped)} files, e.g. {card.skipped[0]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
