"""Command line: ``python -m core.data describe SOURCE [--json]`` prints a dataset's card;
``python -m core.data export SOURCE OUT [--limit-per-class N]`` writes it as an ImageFolder
tree with a masks/ mirror."""
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
    _source_options(describe)
    export = sub.add_parser(
        "export", help="write a dataset as OUT/train/<class>/<id>.png, OUT/test/... and OUT/masks/...",
    )
    export.add_argument("source", help=f"a path or one of: {', '.join(list_builtin())}")
    export.add_argument("out", help="a new (or empty) folder to write into")
    _source_options(export)
    args = parser.parse_args(argv)

    try:
        ds = load_dataset(
            args.source, seed=args.seed, limit_per_class=args.limit_per_class, rho=args.rho,
            allow_download=args.allow_download, root=args.root,
        )
        if args.command == "export":
            from .export import export_image_folder

            print(export_image_folder(ds, args.out).describe())
            return 0
    except (DataError, OSError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(ds.card.to_dict(), indent=2) if args.json else format_card(ds.card))
    return 0


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--rho", type=float, default=None,
                        help="bias of the biased-digits sets (default 0.99; or SOURCE?rho=R)")
    parser.add_argument("--allow-download", action="store_true", help="download torchvision sets if missing")
    parser.add_argument("--root", default=None, help="folder of a torchvision set")


def format_card(card: DatasetCard) -> str:
    """The card as a plain-text table: one row per class, one column per split."""
    splits = list(card.splits)
    width = max([len("class"), len("total"), *(len(c) for c in card.classes)])
    lines = [
        f"{card.name}: {card.total} images of shape {list(card.image_shape)}, {len(card.classes)} classes",
        f"source:  {card.source}",
        f"license: {card.license}",
        *([f"masks:   {card.masked} of {card.total} images"] if card.masked else []),
        "",
        f"{'class':<{width}}" + "".join(f"{s:>14}" for s in splits),
    ]
    for cls in card.classes:
        lines.append(f"{cls:<{width}}" + "".join(f"{card.splits[s][cls]:>14}" for s in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(card.splits[s].values()):>14}" for s in splits))
    lines += [f"note: {n}" for n in card.notes]
    if card.skipped:
        lines.append(f"skipped {len(card.skipped)} files, e.g. {card.skipped[0]}")
    if card.mask_problems:
        lines.append(f"{len(card.mask_problems)} mask problems, e.g. {card.mask_problems[0]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
