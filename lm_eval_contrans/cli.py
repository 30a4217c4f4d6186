"""`contrans` command line: build and inspect transplant artifacts, list shipped concept sets."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lm_eval_contrans.errors import ConTransError


def _layer(text: str):
    return text  # resolved against the model's depth later (index or fraction)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrans", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a transplant artifact and print its diagnostics")
    build.add_argument("--source", required=True, help="source (aligned) model: hub id, folder or .gguf")
    build.add_argument("--target", required=True, help="target model: hub id, folder or .gguf")
    build.add_argument("--concept", default="sentiment", help="shipped concept name or concept-set file")
    build.add_argument("--out", required=True, help="where to write the .safetensors artifact")
    build.add_argument("--source-layer", type=_layer, default=None, help="block index or depth fraction (default 0.75)")
    build.add_argument("--target-layer", type=_layer, default=None, help="block index or depth fraction (default 0.75)")
    build.add_argument("--anchors", default=None, help="anchor corpus .txt/.jsonl (default: shipped corpus)")
    build.add_argument("--ridge", type=float, default=0.0, help="relative L2 penalty; 0 = least squares (reference)")
    build.add_argument("--dtype", default="float32")
    build.add_argument("--device", default=None)
    build.add_argument("--batch-size", default="auto", help="texts per batch, or auto (token budget)")

    inspect = commands.add_parser("inspect", help="print an artifact's metadata")
    inspect.add_argument("artifact")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("concepts", help="list the shipped concept sets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build":
            from lm_eval_contrans.artifact import save_transplant
            from lm_eval_contrans.build import build_transplant

            transplant = build_transplant(
                args.source, args.target, args.concept, source_layer=args.source_layer,
                target_layer=args.target_layer, anchors=args.anchors, ridge=args.ridge,
                dtype=args.dtype, device=args.device, batch_size=args.batch_size,
            )
            save_transplant(transplant, args.out)
            print(transplant.summary())
            print(f"wrote {args.out}")
        elif args.command == "inspect":
            from lm_eval_contrans.artifact import as_dict, load_transplant

            transplant = load_transplant(args.artifact, "artifact")
            if args.json:
                print(json.dumps(as_dict(transplant), indent=2, sort_keys=True))
            else:
                print(transplant.summary())
        elif args.command == "concepts":
            from lm_eval_contrans.concepts import load_concept_set, shipped_concepts

            for name in shipped_concepts():
                concept = load_concept_set(name)
                print(f"{name:<12} {len(concept):>4} pairs  {concept.description}")
    except ConTransError as error:
        print(f"contrans: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
