"""`contrans` command line: build and inspect transplant artifacts, list shipped concept sets."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.request import add_arguments

if TYPE_CHECKING:
    from lm_eval_contrans.loading import ModelSpec

# lm_eval's evaluation options that `contrans compare` takes under lm_eval's names and passes on
EVALUATE_OPTIONS = ("num_fewshot", "apply_chat_template", "fewshot_as_multiturn", "gen_kwargs", "system_instruction")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrans", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_build, _add_inspect, _add_listings, _add_compare, _add_port, _add_export, _add_serve, _add_table):
        add(commands)
    return parser


MODEL_HELP = "hub id[@revision], folder, .gguf, or owner/repo/file.gguf on the hub"


def _add_build(commands) -> None:
    build = commands.add_parser("build", help="build a transplant artifact and print its diagnostics")
    build.add_argument("--source", required=True, help=f"source (aligned) model: {MODEL_HELP}")
    build.add_argument("--target", required=True, help=f"target model: {MODEL_HELP}")
    build.add_argument("--concept", default="sentiment", help="shipped concept name or concept-set file; several as a+b (one artifact, one load of each model)")
    build.add_argument("--out", required=True, help="where to write the .safetensors artifact")
    _build_arguments(build)


def _add_port(commands) -> None:
    port = commands.add_parser("port", help="transplant another tool's steering vector for the source into the target")
    port.add_argument("--vector", required=True,
                      help="llama.cpp/repeng control vector .gguf, lm-eval steered .pt, or a tensor in .safetensors/.pt/.npy")
    port.add_argument("--source", required=True, help=f"the model the vector was made for: {MODEL_HELP}")
    port.add_argument("--target", required=True, help=f"target model: {MODEL_HELP}")
    port.add_argument("--out", required=True, help="where to write the artifact (.safetensors)")
    _build_arguments(port, source_layer="the block a file that names no block was made at (index, negative from the "
                                         "end, or depth fraction)",
                     target_layer="one target block for every block of the file (default: the same relative depth)")


def _add_inspect(commands) -> None:
    inspect = commands.add_parser("inspect", help="print an artifact's metadata, or what another tool's steering-vector file holds")
    inspect.add_argument("artifact")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")


def _add_listings(commands) -> None:
    commands.add_parser("concepts", help="list the shipped concept sets")
    commands.add_parser("tasks-path", help="print the folder of the shipped task YAMLs (for --include_path)")
    folder = commands.add_parser("folder", help="print the folder a model name loads from (a GGUF file or packaged "
                                               "model: its de-quantized folder, made once), for tools that take "
                                               "folders, such as --model vllm")
    folder.add_argument("model", help=f"{MODEL_HELP}, packaged:...")
    _trust_argument(folder)


def _add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="run the comparison grid and write tables and plots")
    compare.add_argument("--source", required=True)
    compare.add_argument("--target", required=True)
    compare.add_argument("--concept", default="sentiment")
    compare.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    compare.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    add_arguments(compare, "recipe")
    compare.add_argument("--instruct", default=None, help="an instruction-tuned target to add as a row")
    compare.add_argument("--out", default="contrans_compare", help="output folder (resumable)")
    compare.add_argument("--limit", type=float, default=None)
    compare.add_argument("--batch_size", "--batch-size", default="8")
    compare.add_argument("--device", default=None)
    compare.add_argument("--dtype", default=None)
    compare.add_argument("--seed", type=int, default=0, help="seed of the random-vector control")
    compare.add_argument("--metadata", default=None, help="JSON passed to the tasks, e.g. local data paths")
    compare.add_argument("--include_path", "--include-path", action="append", default=[],
                         help="a folder of your own task YAMLs, as for lm_eval (repeatable)")
    compare.add_argument("--num_fewshot", "--num-fewshot", type=int, default=None, help="as for lm_eval")
    compare.add_argument("--apply_chat_template", "--apply-chat-template", nargs="?", const=True, default=None,
                         help="as for lm_eval (optionally a template name); the prompt baseline's instruction then goes "
                              "into the system instruction")
    compare.add_argument("--fewshot_as_multiturn", "--fewshot-as-multiturn", action="store_true", default=None,
                         help="as for lm_eval")
    compare.add_argument("--gen_kwargs", "--gen-kwargs", default=None, help="as for lm_eval, e.g. temperature=0,max_gen_toks=64")
    compare.add_argument("--system_instruction", "--system-instruction", default=None, help="as for lm_eval")
    compare.add_argument("--no-controls", action="store_true", help="skip the random, own-vector and prompt rows")
    compare.add_argument("--random-directions", "--random_directions", type=int, default=8,
                         help="random directions at each alpha (the band; 1: a single random row, seed --seed)")
    compare.add_argument("--allow-large-band", action="store_true",
                         help="run a band of more than 64 random directions (each is a row per alpha)")
    compare.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                         help="what evaluates the steered rows (base, each alpha, the controls): hf, or one vLLM "
                              "engine for all of them, each row's requests steered as it asks (docs/VLLM.md)")
    compare.add_argument("--engine-args", "--engine_args", default=None,
                         help="with --engine vllm: lm-eval's --model vllm args, e.g. max_model_len=512,"
                              "gpu_memory_utilization=0.5")
    _trust_argument(compare)
    compare.add_argument("--also-metrics", nargs="*", default=["margin"],
                         help="metrics shown next to each task's main metric where the task reports them")


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="write an artifact in another tool's format")
    export.add_argument("artifact")
    export.add_argument("--format", required=True, choices=["steered", "gguf"],
                        help="steered: .pt for lm-eval's --model steered; gguf: llama.cpp control vector")
    export.add_argument("--out", required=True)
    export.add_argument("--target", default=None, help="target model (steered format: names the hookpoint); default: the artifact's")
    export.add_argument("--alpha", type=float, default=1.0, help="steering_coefficient of the steered format")


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", allow_abbrev=False, help="vLLM's OpenAI-compatible server with a transplant (any other flag is vllm serve's)",
        description="Serve the target with vLLM's OpenAI-compatible server, steered by a transplant built, ported or "
                    "loaded as for --model contrans. Every flag not listed here is passed to `vllm serve` "
                    "(--dtype, --port, --max-model-len, --enforce-eager, --tensor-parallel-size, ...).")
    serve.add_argument("--target", required=True, help=f"the model to serve: {MODEL_HELP}, packaged:...")
    serve.add_argument("--source", default=None, help="aligned model to build the concept in (or the model --source-vector was made for)")
    serve.add_argument("--concept", "--concepts", default="sentiment",
                       help="shipped concept name or concept-set file; several as a+b: each loaded once, before the "
                            "server starts, and a request picks among them (vllm_xargs)")
    serve.add_argument("--vector", default=None, help="an artifact (.safetensors), or another tool's vector made for the target")
    serve.add_argument("--source-vector", default=None, help="another tool's vector made for the source, ported into the target")
    serve.add_argument("--alpha", default="1.0", help="the strength a request that names none gets, in the artifact's "
                                                      "unit (0: unsteered by default); one per concept as a+b")
    serve.add_argument("--positions", default="all", choices=["all", "prompt", "generated"],
                       help="where the vector is added for a request that names none")
    add_arguments(serve, "recipe")
    add_arguments(serve, "build")
    _trust_argument(serve)


def _add_table(commands) -> None:
    table = commands.add_parser("table", help="tabulate lm-eval output folders (or compare folders)")
    table.add_argument("folders", nargs="+")
    table.add_argument("--out", default=None, help="also write table.md, table.csv and plots here")
    table.add_argument("--also-metrics", nargs="*", default=["margin"])


def _build_arguments(parser: argparse.ArgumentParser, **help: str) -> None:
    """What `build` and `port` share: the recipe (`help`: a command's own help for one of its flags), the
    precision and place of the passes, and trust."""
    add_arguments(parser, "recipe", help=help)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    add_arguments(parser, "build", also={"build_batch_size": ("--batch-size",)})
    _trust_argument(parser)


def _trust_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--trust-remote-code", action="store_true",
                         help="run the code that the source's and the target's folders or hub repositories ship")


def _models(args) -> tuple[ModelSpec, ModelSpec]:
    from lm_eval_contrans.loading import parse_model_pair

    return parse_model_pair(args.source, args.target, trust_remote_code=args.trust_remote_code)


def _recipe_options(args) -> dict:
    """The recipe flags as the Python API's keyword arguments (`contrans compare`'s build, and its key)."""
    from lm_eval_contrans.request import options

    return {option.python or option.name: getattr(args, option.name) for option in options() if option.group == "recipe"}


def _check_before_work(args) -> None:
    """What a command writes and the numbers it is given, checked before any model loads."""
    from lm_eval_contrans.paths import writable_output
    from lm_eval_contrans.transplant import check_alpha

    for alpha in [getattr(args, "alpha", None)] + list(getattr(args, "alphas", None) or []):
        if alpha is not None and args.command != "serve":  # serve's alpha: one per concept, read with the others
            check_alpha(alpha)
    alphas = list(getattr(args, "alphas", None) or [])
    repeated = next((alpha for position, alpha in enumerate(alphas) if alpha in alphas[:position]), None)
    if repeated is not None:  # each alpha is a row of the grid, named by it: found only after the build otherwise
        raise ConTransError("alphas", f"{repeated:g} is given twice ({' '.join(f'{a:g}' for a in alphas)}); each "
                                      "alpha makes one row of the table, so give each once")
    if args.command == "compare":
        from lm_eval_contrans.experiments.compare import check_random_directions

        check_random_directions(args.random_directions, args.alphas, args.allow_large_band)
    if args.command in ("build", "port", "export"):  # after the numbers: a folder checked writable is made
        writable_output(args.out, "out")
    elif args.command in ("compare", "table") and args.out:
        writable_output(args.out, "out", folder=True)


def _run_build(args, rest) -> None:
    from lm_eval_contrans.pipeline.build import build_request
    from lm_eval_contrans.request import SteeringRequest

    source, target = _models(args)
    # several concepts (a+b) share one load of each model and one artifact
    request = SteeringRequest.from_namespace(args, source=source, target=target)
    _save_and_describe(build_request(request, dtype=args.dtype, device=args.device), args.out, "")


def _run_port(args, rest) -> None:
    from lm_eval_contrans.pipeline.build import build_request
    from lm_eval_contrans.request import SteeringRequest

    source, target = _models(args)
    # `port --vector` is the source's vector, ported (vector= is one made for the target)
    request = SteeringRequest.from_namespace(args, source=source, target=target, vector=None, source_vector=args.vector)
    transplants = build_request(request, dtype=args.dtype, device=args.device)
    _save_and_describe(transplants, args.out, f" ({len(transplants)} block(s))")


def _save_and_describe(transplants: list, out: str, note: str) -> None:
    from lm_eval_contrans.artifact import save_transplants

    save_transplants(transplants, out)
    print("\n\n".join(transplant.summary() for transplant in transplants))
    print(f"wrote {out}{note}")


def _run_inspect(args, rest) -> None:
    from lm_eval_contrans.artifact import load_steering
    from lm_eval_contrans.transplant_args import is_artifact_path
    from lm_eval_contrans.vectors import UNPLACED, read_vector

    if not is_artifact_path(args.artifact):  # what `contrans port` or vector= would read from it
        vector = read_vector(args.artifact, source_layer=UNPLACED, argument="artifact")
        print(json.dumps(vector.describe(), indent=2, sort_keys=True) if args.json else vector.summary())
        return
    transplants = load_steering(args.artifact, "artifact")
    if args.json:
        described = [item.describe() for item in transplants]
        print(json.dumps(described[0] if len(described) == 1 else described, indent=2, sort_keys=True))
    else:
        print("\n\n".join(transplant.summary() for transplant in transplants))


def _run_concepts(args, rest) -> None:
    from lm_eval_contrans.concepts import load_concept_set, shipped_concepts

    for name in shipped_concepts():
        concept = load_concept_set(name)
        print(f"{name:<12} {len(concept):>4} pairs  {concept.description}")


def _run_tasks_path(args, rest) -> None:
    from lm_eval_contrans.tasks_path import shipped_dir

    print(shipped_dir("tasks"))


def _run_folder(args, rest) -> None:
    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    print(pretrained_path(parse_model_spec(args.model, "model", trust_remote_code=args.trust_remote_code)))


def _run_compare(args, rest) -> None:
    from lm_eval_contrans.experiments.compare import ComparePlan, run_compare

    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    plan = ComparePlan(
        source=args.source, target=args.target, concept=args.concept,
        tasks=[task for task in args.tasks.split(",") if task], alphas=args.alphas,
        instruct=args.instruct, out=Path(args.out), limit=limit, batch_size=batch_size,
        device=args.device, seed=args.seed,
        model_args={**({"dtype": args.dtype} if args.dtype else {}),
                    **({"trust_remote_code": True} if args.trust_remote_code else {})},
        task_metadata=json.loads(args.metadata) if args.metadata else {}, controls=not args.no_controls,
        include_path=args.include_path,
        extra_metrics=tuple(args.also_metrics), build_options=_recipe_options(args),
        evaluate={option: getattr(args, option) for option in EVALUATE_OPTIONS if getattr(args, option) is not None},
        engine=args.engine, engine_args=_engine_args(args), random_directions=args.random_directions,
        allow_large_band=args.allow_large_band,
    )
    run_compare(plan)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))  # the table, paired tests and verdicts
    print(f"wrote {Path(args.out) / 'table.md'}, table.csv, plots/ and rows/")


def _engine_args(args) -> dict:
    if args.engine_args is None:
        return {}
    if args.engine != "vllm":
        raise ConTransError("engine_args", "these are the vLLM engine's: give --engine vllm too")
    import difflib

    from lm_eval.utils import simple_parse_args_string

    from lm_eval_contrans.vllm.checks import require_vllm

    require_vllm("contrans compare --engine vllm")
    from lm_eval_contrans.vllm.lm_eval_model import engine_arg_names

    parsed, known = simple_parse_args_string(args.engine_args), engine_arg_names()
    for name in parsed:  # before the build: the engine would refuse it only when it starts
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            raise ConTransError("engine_args", f"{name}: not an arg of lm-eval's --model vllm or vLLM's engine"
                                               + (f"; did you mean {near[0]}?" if near else ""))
    return parsed


def _run_export(args, rest) -> None:
    from lm_eval_contrans.artifact import load_steering
    from lm_eval_contrans.export import export_gguf, export_steered
    from lm_eval_contrans.provenance import directions_of

    transplants = load_steering(args.artifact, "artifact")
    if args.format == "steered":
        target = args.target or getattr(transplants[0], "target", None)
        if target is None:
            raise ConTransError("target", f"{args.artifact} holds bare directions, which name no model: give --target")
        export_steered(transplants, args.out, target, args.alpha)
    else:
        export_gguf(transplants, args.out)
    blocks = sorted({direction.block for direction in directions_of(transplants)})
    print(f"wrote {args.out} ({args.format}, block{'s' if len(blocks) > 1 else ''} {', '.join(map(str, blocks))})")


def _run_serve(args, rest) -> None:
    from lm_eval_contrans.request import SteeringRequest
    from lm_eval_contrans.vllm.serve import serve_command

    command = serve_command(SteeringRequest.from_namespace(args), rest, trust_remote_code=args.trust_remote_code)
    print("contrans serve: " + " ".join(command[2:]), file=sys.stderr, flush=True)
    os.execv(command[0], command)


def _run_table(args, rest) -> None:
    from lm_eval_contrans.experiments.report import report_markdown, rows_from_folder, write_report

    rows = [row for folder in args.folders for row in rows_from_folder(Path(folder))]
    if not rows:
        raise ConTransError("folders", "no lm-eval results (results_*.json or row.json) found")
    if args.out:  # the table, paired tests and verdicts written there, and printed as written
        print(write_report(rows, Path(args.out), extra_metrics=tuple(args.also_metrics)).read_text(encoding="utf-8"))
    else:
        print(report_markdown(rows, tuple(args.also_metrics)))


COMMANDS = {"build": _run_build, "port": _run_port, "inspect": _run_inspect, "concepts": _run_concepts,
            "tasks-path": _run_tasks_path, "folder": _run_folder, "compare": _run_compare, "export": _run_export, "serve": _run_serve,
            "table": _run_table}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "serve":  # only `serve` passes flags on (to vllm serve)
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_before_work(args)
        COMMANDS[args.command](args, rest)
    except ConTransError as error:
        print(f"contrans: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for it; cache entries are written whole
        from lm_eval_contrans._plugin import interrupted

        print(interrupted(), file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early (`contrans concepts | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
