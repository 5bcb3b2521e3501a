"""The `compass` command: verbs -> stage functions. Nothing else lives here."""
from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from collections.abc import Collection

from compass.errors import CompassError
from compass.stages import STAGES, get_stage, summary

MAIN_EXAMPLE = """examples:
  compass demo                                  # the tiny recipe, offline, on a CPU
  compass run tiny --workdir work               # a recipe by name or file, cached stages skipped
  compass recipes                               # the packaged recipes; `compass recipes copy NAME DIR`
  compass pairs --traces traces.jsonl --out pairs/ --seed 42
  compass runs leaderboard --metric gsm8k.accuracy
  compass VERB --help                           # every verb shows an example
"""

# verbs with their own argument parsers, dispatched with the rest of the command line
DELEGATED = {
    "runs": ("compass.commands.runs", "search, compare and reproduce recorded runs",
             "compass runs list | show RUN | search QUERY | leaderboard | diff A B | lineage RUN | reproduce RUN | report"),
    "card": ("compass.commands.card", "write a model card for a run's checkpoint from the ledger, or --check one",
             "compass card RUN --out card/README.md [--license L] [--base-model HUB_ID] | compass card --check CARD.md"),
    "export": ("compass.commands.export", "a run's checkpoint + card + processor + chat template in the hub layout",
               "compass export RUN --out DIR [--push REPO]"),
}


def _is_text(annotation) -> bool:
    """Fields whose CLI value is taken verbatim (not YAML-parsed): str, Path and their optionals."""
    if annotation in (str, Path):
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and args[0] in (str, Path)
    return False


def _is_bool(annotation) -> bool:
    return annotation is bool


def _flag_fields(config_class) -> list[tuple[tuple[str, ...], typing.Any]]:
    """(key path, pydantic field) of every flag: top-level fields, and each field of a ConfigBlock section
    (e.g. eval's `mmlongbench: {dpi: ...}` -> --mmlongbench-dpi)."""
    from compass.config import ConfigBlock

    flags = []
    for name, field in config_class.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, ConfigBlock):
            flags += [((name, sub_name), sub) for sub_name, sub in field.annotation.model_fields.items()]
        else:
            flags.append(((name,), field))
    return flags


def default_text(value) -> str:
    """A config default as the user would write it on the command line: YAML (flow style), not a Python repr."""
    import yaml
    from pydantic_core import to_jsonable_python

    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("\n...").strip()


def input_metavar(help_text: str) -> str:
    """DIR for inputs that are directories only; PATH for a file (or either)."""
    lowered = help_text.lower()
    return "DIR" if "directory" in lowered and "file" not in lowered and "jsonl" not in lowered else "PATH"


class CompassParser(argparse.ArgumentParser):
    """argparse with a "did you mean" for unknown flags and verbs (Python 3.11's argparse has neither)."""

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._verb_parser(namespace)
            unknown = [x for x in extras if x.startswith("-")]
            hints = [hint for x in unknown if (hint := closest(x.split("=", 1)[0], list(parser._option_string_actions)))]
            message = f"unrecognized arguments: {' '.join(extras)}"
            parser.error(message + (f" (did you mean {', '.join(hints)}?)" if hints else ""))
        return namespace

    def _verb_parser(self, namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                verb = getattr(namespace, action.dest)
                if verb in action.choices:
                    return action.choices[verb]._verb_parser(namespace)
        return self

    def error(self, message: str):
        # "argument VERB: invalid choice: 'sft2' (choose from ...)": name the closest choice instead of all
        if "invalid choice: " in message:
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    word = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0].strip("'")
                    hint = closest(word, list(action.choices))
                    message = f"unknown {action.metavar or 'choice'} {word!r}" + (f"; did you mean {hint!r}?" if hint else
                                                                            f"; choose from {', '.join(action.choices)}")
        super().error(message)


def closest(word: str, candidates: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def add_stage_verb(sub, kind: str) -> None:
    module = get_stage(kind)
    doc = (module.__doc__ or kind).strip()
    parser = sub.add_parser(
        kind, help=doc.splitlines()[0].replace("%", "%%"), description=doc,
        epilog=f"example:\n  {module.EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (manifest.json is written last)")
    parser.add_argument("--config", type=Path, help="YAML file with this stage's config; flags override it")
    parser.add_argument("--force", action="store_true", help="run even when a matching completed run exists in --out")
    parser.add_argument("--rehash", action="store_true", help="read every input and output file again instead of "
                        "trusting the stat cache of hashes (and refresh it)")
    inputs = parser.add_argument_group("inputs")
    for name, port in module.INPUTS.items():
        inputs.add_argument(f"--{name.replace('_', '-')}", dest=f"input__{name}", type=Path, metavar=input_metavar(port.help),
                            help=(port.help + ("" if port.required else " (optional)")).replace("%", "%%"))
    options = parser.add_argument_group("config (defaults shown)")
    for path, field in _flag_fields(module.Config):
        flag = "--" + "-".join(path).replace("_", "-")
        default = "required" if field.is_required() else f"default: {default_text(field.get_default(call_default_factory=True))}"
        text = f"{field.description or ''} ({default})".replace("%", "%%")  # argparse %-formats help texts
        if _is_bool(field.annotation):
            options.add_argument(flag, dest="cfg__" + "__".join(path), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            options.add_argument(flag, dest="cfg__" + "__".join(path), default=None, metavar="VALUE", help=text)
    parser.set_defaults(handler=lambda args, kind=kind: run_stage_verb(kind, args))


def flag_value(path: tuple[str, ...], value: str):
    """A config flag's value, parsed as YAML (a number, a list, a mapping); a parse error names the flag."""
    import yaml

    from compass.config import check_yaml_tree

    flag = "--" + "-".join(path).replace("_", "-")
    try:
        node = yaml.compose(value, Loader=yaml.SafeLoader)
        if node is not None:
            check_yaml_tree(node, Path(flag))
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = err.problem if isinstance(err, yaml.MarkedYAMLError) and err.problem else str(err)
        raise CompassError(f"{flag} {value!r}: not a valid YAML value ({problem}); quote a string, e.g. {flag} \"{value}\"") from None


def run_stage_verb(kind: str, args: argparse.Namespace) -> int:
    from compass.config import load_stage_config
    from compass.runner import execute_stage

    module = get_stage(kind)
    overrides = {}
    for path, field in _flag_fields(module.Config):
        value = getattr(args, "cfg__" + "__".join(path))
        if value is None:
            continue
        target = overrides
        for key in path[:-1]:  # a config block's field: {block: {field: value}}
            target = target.setdefault(key, {})
        target[path[-1]] = value if _is_text(field.annotation) or _is_bool(field.annotation) else flag_value(path, value)
    config = load_stage_config(module.Config, args.config, overrides)
    inputs = {name: getattr(args, f"input__{name}") for name in module.INPUTS if getattr(args, f"input__{name}") is not None}
    result = execute_stage(kind, config, inputs, args.out, force=args.force, rehash=args.rehash)
    state = "cached (matching completed run)" if result.cached else f"done in {result.manifest.wall_time_s:.1f}s"
    print(f"{kind}: {state} -> {result.out_dir}")
    from compass.logs import get as get_logger
    from compass.logs import number, result_warnings

    for key, value in result.manifest.metrics.items():
        print(f"  {key}: {number(value)}")
    for text in result_warnings(kind, result.manifest.metrics):
        get_logger("run").warning(f"warning: {kind}: {text}")
    return 0


def cmd_gather(args: argparse.Namespace) -> int:
    from compass.launch.gather import gather_request
    from compass.runner import execute_stage

    kind, config, inputs = gather_request(args.shards)
    result = execute_stage(kind, config, inputs, args.out, gather_from=args.shards, force=args.force, rehash=args.rehash)
    state = "cached (matching completed run)" if result.cached else f"{len(args.shards)} shards joined"
    print(f"{kind}: {state} -> {result.out_dir}")
    for key, value in result.manifest.metrics.items():
        print(f"  {key}: {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from compass.pipeline import run_recipe

    workdir = args.workdir or Path("runs") / Path(args.recipe).name.removesuffix(".yaml").removesuffix(".yml")
    results = run_recipe(args.recipe, workdir, only=args.only, rehash=args.rehash, jobs=args.jobs)
    from compass.pipeline import summary_table

    print("\n" + summary_table(results))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import shlex

    from compass.sweep import run_sweep

    workdir = args.workdir or Path("runs") / (Path(args.recipe).name.removesuffix(".yaml").removesuffix(".yml") + "-sweep")
    command = shlex.join(["compass", "sweep", str(args.recipe), *[a for s in args.set for a in ("--set", s)],
                          "--workdir", str(workdir)])
    run_sweep(args.recipe, workdir, args.set, command=command, rehash=args.rehash, dry_run=args.dry_run, jobs=args.jobs)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from compass.packaged import copy_recipe, describe_recipes

    if args.action is None:
        rows = describe_recipes()
        width = max(len(name) for name, _, _ in rows)
        for name, description, n_stages in rows:
            print(f"{name:<{width}}  {n_stages:>2} stages  {description}")
        print("\nrun one: compass run NAME; edit one: compass recipes copy NAME DIR")
        return 0
    for path in copy_recipe(args.name, args.dir, overwrite=args.force):
        print(f"wrote {path}")
    print(f"edit it, then: compass run {args.dir / (args.name + '.yaml')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from compass.demo import run_demo

    run_demo(args.workdir)
    return 0


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser. `full`: the stage verbs that get their whole parser (flags from their config class,
    which imports their module); the others are listed by name and summary only (compass.stages.SUMMARIES), so
    `compass --help` and every non-stage verb import no stage module. None: every stage verb in full."""
    parser = CompassParser(
        prog="compass", description="Reproducible recipes for reasoning-enhanced Japanese document VLMs.",
        epilog=MAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own output too (progress bars, "
                        "info messages, deprecation warnings); compass hides it by default")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    demo = sub.add_parser("demo", help="run the tiny recipe offline on a CPU and print where results are",
                          epilog="example:\n  compass demo --workdir work/demo", formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--workdir", type=Path, help="work directory (default: a fresh compass-demo/<timestamp>)")
    demo.set_defaults(handler=cmd_demo)

    run = sub.add_parser("run", help="run a recipe end to end; completed stages are skipped (cached)",
                         epilog="examples:\n  compass run tiny --workdir work/tiny        # a packaged recipe, by name\n"
                                "  compass run my-recipes/tiny.yaml           # a recipe file",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("recipe", help="a recipe file, or the name of a packaged recipe (`compass recipes` lists them)")
    run.add_argument("--workdir", type=Path, help="where stage outputs go (default: runs/<recipe name>)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must exist)")
    run.add_argument("--rehash", action="store_true", help="read every file again instead of trusting the stat cache of hashes")
    run.add_argument("--jobs", type=int, default=1, help="stages run at once, each in its own process, once their "
                     "inputs are done (default 1: one after another)")
    run.set_defaults(handler=cmd_run)

    gather = sub.add_parser("gather", help="join the shard runs of a stage (--shard I/N: data stages, evidence, doc-questions, distill) into its unsharded output",
                            epilog="example:\n  compass pages --pdfs pdfs --out pages-0 --shard 0/2 && compass pages --pdfs pdfs "
                            "--out pages-1 --shard 1/2\n  compass gather --out pages pages-0 pages-1",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    gather.add_argument("shards", nargs="+", type=Path, help="the output directories of all N shard runs, any order")
    gather.add_argument("--out", required=True, type=Path, help="output directory of the joined run")
    gather.add_argument("--force", action="store_true", help="join again even when a matching completed run exists in --out")
    gather.add_argument("--rehash", action="store_true", help="read every file again instead of trusting the stat cache")
    gather.set_defaults(handler=cmd_gather)

    sweep = sub.add_parser("sweep", help="run variants of a recipe; stages a variant does not change run once for all",
                           epilog="examples:\n  compass sweep longdoc-ablation --workdir work/ablation     # its sweep: block\n"
                                  "  compass sweep tiny --set 'doc_examples.config.top_k=[16, 24]' \\\n"
                                  "      --set 'doc_merge.config.weights=[[0.25], [0.5]]' --workdir work/grid\n"
                                  "  compass runs table --sweep tiny --rows top_k --cols weights --metric mmlongbench.cot_on.accuracy",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("recipe", help="a recipe file, or the name of a packaged recipe")
    sweep.add_argument("--set", action="append", default=[], metavar="PATH=[V1, V2]",
                       help="a grid axis: '<stage>.config.<key>' (or 'seed') and a YAML list of values; repeatable, "
                            "crossed with the recipe's sweep: block")
    sweep.add_argument("--workdir", type=Path, help="where stage outputs go (default: runs/<recipe name>-sweep)")
    sweep.add_argument("--dry-run", action="store_true", help="write sweep.yaml and print the plan; run nothing")
    sweep.add_argument("--jobs", type=int, default=1, help="stage runs at once (variants side by side), each in its "
                       "own process (default 1)")
    sweep.add_argument("--rehash", action="store_true", help="read every file again instead of trusting the stat cache of hashes")
    sweep.set_defaults(handler=cmd_sweep)

    recipes = sub.add_parser("recipes", help="list the packaged recipes, or copy one out to edit",
                             epilog="examples:\n  compass recipes\n  compass recipes copy tiny my-recipes/",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes_sub = recipes.add_subparsers(dest="action", metavar="ACTION")
    copy = recipes_sub.add_parser("copy", help="write NAME.yaml and the launch configs it names into DIR")
    copy.add_argument("name", help="a packaged recipe (see `compass recipes`)")
    copy.add_argument("dir", type=Path, help="directory for the copy (created)")
    copy.add_argument("--force", action="store_true", help="replace files already there")
    recipes.set_defaults(handler=cmd_recipes)

    for kind in STAGES:
        if not importlib_find(STAGES[kind]):
            continue
        if full is None or kind in full:
            add_stage_verb(sub, kind)
        else:  # never parsed: main() builds the invoked verb in full
            sub.add_parser(kind, help=summary(kind).replace("%", "%%"), add_help=False)
    for verb, (module, help_text, usage) in DELEGATED.items():
        if importlib_find(module):
            sub.add_parser(verb, help=help_text, usage=usage, add_help=False)
    return parser


def importlib_find(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is not there either
        return False


def one_line(message: str) -> str:
    """An error message on one line (a YAML or validation message may span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def redact_text(text: str) -> str:
    from compass.ledger.redact import redact_text as redact  # on the error path only: its patterns take ~5 ms to compile

    return redact(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    verbose = "--verbose" in argv  # anywhere on the line, like --debug (before any library is imported)
    if verbose:
        argv.remove("--verbose")
    from compass.logs import configure

    configure(verbose)
    try:
        if argv and argv[0] in DELEGATED:
            import importlib

            return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        if argv[:2] == ["eval", "compare"]:  # a sub-verb beside the eval stage verb: runs side by side
            from compass.evals.compare import main as compare_main

            return compare_main(argv[2:])
        # the verb is the first word (--debug and --verbose are gone); only its parser is built in full
        parser = build_parser(full=[word for word in argv[:1] if word in STAGES])
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help()
            return 2
        return args.handler(args)
    except CompassError as err:
        if debug:
            raise
        print(f"error: {redact_text(one_line(str(err)))}", file=sys.stderr)  # never echo a secret value
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence: one line, traceback on --debug
        if debug:
            raise
        print(f"error: {type(err).__name__}: {redact_text(one_line(str(err)))} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
