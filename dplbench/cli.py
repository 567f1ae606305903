"""The ``dplbench`` command line: run | sweep | table | compare | plot | dry-run | ls | validate | pretrain-toy |
build-knowledge.

Every command takes ``key=value`` settings; ``run``, ``sweep``, ``table``, ``plot`` and ``dry-run`` also take
``--config FILE.yaml`` and ``--cfg`` (print what will really run and exit). User mistakes print one ``error:`` line
and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dplbench import __version__
from dplbench.argparsing import OneLineParser
from dplbench.errors import DplbenchError
from dplbench.workspace import Workspace

LS_KINDS = ("methods", "protocols", "datasets", "backbones", "sweeps")
LS_SETTINGS = {"methods": (), "protocols": (), "datasets": ("data.root",), "backbones": (), "sweeps": ()}
VALIDATE_SETTINGS = ("suite", "protocol", "datasets", "dataset", "data.root")
KNOWLEDGE_SETTINGS = ("dataset", "datasets", "llm.path", "llm.questions", "run.output_dir", "data.root",
                      "run.device", "noun_phrases", "batch_size", "dtype", "max_new_tokens")

EPILOG = """examples:
  dplbench run protocol=base2novel                      # built-in toy benchmark, tiny CLIP, no downloads
  dplbench run protocol=base2novel method=coop seeds=[1] train.epochs=5
  dplbench run method=coop --cfg                        # the effective recipe and options, nothing runs
  dplbench dry-run protocol=few_shot suite=standard data.root=/data
  dplbench validate data suite=standard data.root=/data
  dplbench sweep sweep.name=drople_ablation
  dplbench table protocol=base2novel stats=ci            # with 95% intervals (docs/statistics.md)
  dplbench compare protocol=base2novel a=drople b=coop  # paired differences with intervals and p-values
  dplbench table protocol=base2novel methods=[coop,kgcoop]
  dplbench ls methods coop --details
  dplbench ls datasets data.root=/data

`dplbench COMMAND --help` lists the keys of each command.
"""

COMMON_KEYS = """selection and settings (key=value; lists as seeds=[1,2,3]):
  protocol=NAME            base2novel (default), few_shot, cross_dataset, ... (`dplbench ls protocols`)
  suite=toy|standard       the built-in toy world (default) or the real datasets
  methods=[a,b] method=a   methods (default: the protocol's); method.<option>=v sets a method option
  datasets=[..] seeds=[..] shots=[..]   restrict the unit matrix
  train.epochs / train.lr / train.batch_size   override the methods' recipes (null = recipe)
  backbone.name=ViT-B-16 backbone.pretrained=openai backbone.precision=auto
  data.root=/data          where the datasets live ($DPLBENCH_DATA, else ~/data)
  data.paths.<dataset>=/p  one dataset's folder, anywhere
  run.output_dir=results   the workspace (runs/, logs/, tables/, plots/, mlflow.db, ...)
"""

DESCRIPTIONS = {
    "run": "Expand the protocol into units (method x dataset x shots x seed), train and evaluate the pending ones "
           "(Ray Tune; units already done are skipped), then print the table.\n\n" + COMMON_KEYS +
           "  run.device=auto|cpu|cuda  ray.enabled=false (in this process)  tracking.enabled=false (no MLflow)\n"
           "  --force                  recompute finished units\n"
           "  --verbose                also Ray's, Tune's and MLflow's INFO lines (run.log_level=info; default: "
           "their warnings only)\n\n"
           "The data is checked before anything starts (`dplbench validate data` shows the details).\n"
           "Per-unit logs: <run.output_dir>/logs/<unit>.log",
    "sweep": "Grid or Optuna search over config keys; every trial runs all units of the run and writes their "
             "result files.\n\n"
             "sweep keys:\n"
             "  sweep.name=NAME          a definition in protocols/sweeps/ (`dplbench ls sweeps`)\n"
             "  sweep.params.<key>=[v1,v2]   swept values of any result-relevant key, e.g.\n"
             "                           sweep.params.method.dropout_rate=[0.1,0.3]; Optuna distributions as\n"
             "                           sweep.params.train.lr={type:loguniform,low:1e-4,high:1e-2}\n"
             "  sweep.search=grid|optuna  sweep.num_samples=N (optuna)  sweep.sampler=tpe|random "
             "sweep.sampler_seed=0\n"
             "  sweep.metric=hm sweep.mode=max   the objective (default: the protocol's)\n"
             "  ray.enabled=false        run the trials one after another in this process\n\n" + COMMON_KEYS,
    "table": "Rebuild a protocol's tables from its result files (nothing is recomputed).\n\n"
             "formats and outputs: the table is printed; markdown (.md), LaTeX (.tex) and CSV (.csv) files are "
             "written to <run.output_dir>/tables/ (report.formats=[md,tex,csv]; report.style=paper writes "
             "<protocol>.paper.* beside them); <run.output_dir>/index.html (static, open in a browser) and "
             "index.md gather every protocol's tables, plots, failed units and the MLflow command.\n"
             "  report.style=default|paper report.decimals=2 report.std=true|false stats=marks|ci|none\n"
             "selection: methods=, seeds=, datasets=, shots=, method.<option>=, train.*=, sweep.name= and "
             "sweep.params.* keep only the matching result files. Units run with overrides (sweeps, method.*) "
             "join the table only when the selection names them or with report.variants=true; each knob that "
             "differs between rows gets its own column.\n\n" + COMMON_KEYS,
    "plot": "Draw the plots a protocol's result files support (ablation, base vs novel, few-shot curves) as PNG "
            "and PDF under <run.output_dir>/plots/. Selections as for `table`.\n\n" + COMMON_KEYS,
    "dry-run": "Print the unit matrix, which units are done, and the resolved config; runs nothing. With "
               "sweep.name= or sweep.params.*: the trials x units of the sweep.\n\n" + COMMON_KEYS,
    "validate": "Check the datasets on disk against the expected layout: every folder, split file and image count, "
                "with the path looked at and what was expected. Exits 1 when something is missing.\n\n"
                "keys: suite=toy|standard (default standard) protocol=NAME (default: every protocol) "
                "datasets=[..] data.root=/data data.paths.<dataset>=/p",
    "build-knowledge": "Build the offline LLM knowledge cache of drople_llamp for datasets (every class, base and "
                       "novel): 11 questions per class, greedy answers, noun phrases, then the last decoder layer's "
                       "keys/values (docs/methods.md §5.2). Resumable: finished classes are skipped.\n\n"
                       "keys: dataset=NAME or datasets=[..]  llm.path=/folder (a local Llama checkpoint; never "
                       "downloaded)\n  run.output_dir=results (the cache goes to <run.output_dir>/cache/knowledge/)  "
                       "data.root=/data  data.paths.<dataset>=/p\n  run.device=cpu|cuda  dtype=float32|bfloat16|"
                       "float16  batch_size=16 (generation)  noun_phrases=auto|spacy|rules\n  "
                       "max_new_tokens=128 (released value; smaller only for quick checks)\n  "
                       "llm.questions=FILE.json|yaml (dataset -> 11 questions with one {}; default: dplbench's "
                       "own questions, not the released ones; pass the same file to dplbench run)\n\n"
                       "Needs the LLM extra: pip install \"dplbench[llm]\"",
    "ls": "List the registered methods, protocols, datasets, backbones or sweep definitions.\n\n"
          "  dplbench ls methods '*coop*'\n  dplbench ls methods coop --details   options, defaults, recipe per "
          "protocol family\n  dplbench ls datasets data.root=/data   which datasets are present",
}


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=110)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with dotted paths, e.g. method.n_ctx=8 seeds=[1,2,3] run.device=cuda")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (applied before overrides)")
    parser.add_argument("--cfg", action="store_true",
                        help="print the resolved config and, per method, the effective recipe and options; exit")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dplbench", description="Benchmark and ablate prompt learning for CLIP-style models.",
        epilog=EPILOG, formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"dplbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=DESCRIPTIONS.get(name, text), formatter_class=_formatter)

    run = add("run", "run a protocol: expand units, train and evaluate them, print the table")
    _add_config_args(run)
    run.add_argument("--force", action="store_true", help="recompute units that are already done")
    run.add_argument("--verbose", action="store_true", help="show Ray's, Tune's and MLflow's INFO lines too")

    sweep = add("sweep", "grid or Optuna search over config keys (e.g. the ablation sweeps)")
    _add_config_args(sweep)
    sweep.add_argument("--force", action="store_true", help="recompute units that are already done")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's, Tune's and MLflow's INFO lines too")

    for name, text in (("table", "rebuild a protocol's tables (md, tex, csv) from its result files "
                                 "(stats=ci adds intervals)"),
                       ("compare", "paired difference of two rows (a=... b=...) per dataset and on average, with "
                                   "intervals and p-values"),
                       ("plot", "draw ablation, base-vs-novel and few-shot plots from result files"),
                       ("dry-run", "print the unit matrix (or a sweep's trials), which units are done, the config")):
        _add_config_args(add(name, text))

    ls = add("ls", "list methods | protocols | datasets | backbones | sweeps")
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. '*coop*'")
    ls.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=/data for `ls datasets`")
    ls.add_argument("--details", action="store_true",
                    help="methods: every option with its default and the recipe per protocol family")

    validate = add("validate", "check the datasets on disk (folders, split files, image counts)")
    validate.add_argument("what", choices=("data",))
    validate.add_argument("overrides", nargs="*", metavar="key=value")

    knowledge = add("build-knowledge", "build the offline LLM knowledge cache of drople_llamp (needs the llm extra)")
    knowledge.add_argument("overrides", nargs="*", metavar="key=value")

    sub.add_parser("pretrain-toy", help="pretrain the built-in tiny CLIP (key=value, e.g. steps=200; --help)",
                   add_help=False)
    return parser


def _config(args: argparse.Namespace, validate_methods: bool = True):
    from dplbench.config import build_config

    cfg = build_config(_overrides(args), args.config, validate_methods=validate_methods)
    cfg.run.command = ["dplbench", *getattr(args, "argv", [])]
    return cfg


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "force", False):
        overrides.append("run.force=true")
    if getattr(args, "verbose", False):
        overrides.append("run.log_level=info")
    return overrides


def _selected(args: argparse.Namespace) -> set[str]:
    from dplbench.config import explicit_keys

    return explicit_keys(list(args.overrides), args.config)


def _settings(command: str, overrides: list[str], valid: Sequence[str], prefixes: Sequence[str] = ()) -> dict:
    """The ``key=value`` settings a light command understands; others are one-line errors."""
    if not overrides:  # the common case stays cheap: no OmegaConf import
        return {}
    from dplbench.config import parse_overrides
    from dplbench.errors import ConfigError, did_you_mean

    settings = dict(parse_overrides(overrides))
    for key in settings:
        if key not in valid and not key.startswith(tuple(prefixes)):
            hint = did_you_mean(key, valid)
            raise ConfigError(f"`{command}` takes no setting {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
                              + f" Valid settings: {', '.join([*valid, *(p + '<name>' for p in prefixes)]) or '(none)'}")
    return settings


def cmd_ls(args: argparse.Namespace) -> int:
    from dplbench.catalog import BACKBONES, DATASETS, METHODS, PROTOCOLS

    # `dplbench ls datasets '*toy*' data.root=/x`: a key=value in the pattern slot is an override
    overrides = list(args.overrides)
    pattern = args.pattern
    if "=" in pattern:
        overrides.insert(0, pattern)
        pattern = "*"
    settings = _settings(f"ls {args.kind}", overrides, LS_SETTINGS[args.kind])
    if args.kind == "sweeps":
        return _ls_sweeps(pattern)
    registry = {"methods": METHODS, "protocols": PROTOCOLS, "datasets": DATASETS, "backbones": BACKBONES}[args.kind]
    names = registry.list(pattern)
    if args.details and args.kind == "methods":
        from dplbench.explain import describe_method

        names = names or [pattern]  # not a wildcard match: let the registry say "did you mean"
        print("\n\n".join(describe_method(name) for name in names))
        return 0
    width = max((len(n) for n in names), default=0)
    if args.kind == "datasets":
        from dplbench.data.paths import resolve_data_root

        root = resolve_data_root(settings.get("data.root"))
        print(f"data root: {root}")
        for name in names:
            info = DATASETS.get(name)
            found = "built-in" if info.kind == "toy" else ("found" if info.is_available(root) else "missing")
            print(f"{name:<{width}}  {found:<8}  {info.description}")
        return 0
    for name in names:
        aliases = registry.aliases(name)
        alias_text = f" (alias: {', '.join(aliases)})" if aliases else ""
        print(f"{name:<{width}}  {registry.describe(name)}{alias_text}")
    if args.kind == "backbones":
        print("(any open_clip model name also works, e.g. backbone.name=ViT-B-16 backbone.pretrained=openai)")
    return 0


def _ls_sweeps(pattern: str) -> int:
    import fnmatch

    from dplbench.orchestrate.sweep import load_sweep_definition, sweep_names

    names = [n for n in sweep_names() if fnmatch.fnmatch(n, pattern)]
    width = max((len(n) for n in names), default=0)
    for name in names:
        definition = load_sweep_definition(name)
        keys = ", ".join(definition.params)
        print(f"{name:<{width}}  {definition.search.value}, protocol {definition.protocol or '(any)'}, "
              f"methods {', '.join(definition.methods) or '(the run)'}: {keys}"
              + (f"  {definition.description}" if definition.description else ""))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from dplbench.catalog import DATASETS, PROTOCOLS
    from dplbench.data.paths import resolve_data_root
    from dplbench.data.validate import check_datasets, format_checks

    settings = _settings("validate data", args.overrides, VALIDATE_SETTINGS, prefixes=("data.paths.",))
    suite = str(settings.get("suite", "standard"))
    wanted = settings.get("datasets", settings.get("dataset"))
    if wanted is not None:
        names = [DATASETS.canonical(d) for d in (wanted if isinstance(wanted, list) else [wanted])]
    else:
        protocols = [PROTOCOLS.canonical(settings["protocol"])] if "protocol" in settings else PROTOCOLS.list()
        names = []
        for name in protocols:
            part = PROTOCOLS.get(name).suites.get(suite) or {}
            names += [*(part.get("datasets") or []), *([part["source"]] if part.get("source") else []),
                      *(part.get("targets") or [])]
        names = [DATASETS.canonical(n) for n in dict.fromkeys(names)]
    paths = {DATASETS.canonical(k[len("data.paths."):]): str(v) for k, v in settings.items()
             if k.startswith("data.paths.")}
    root = resolve_data_root(settings.get("data.root"))
    rows = check_datasets(names, root, paths)
    print(f"data root: {root}")
    print(format_checks(rows))
    return 0 if all(r.ok for r in rows) else 1


def _check_data(cfg, units) -> None:
    """Refuse missing data in one line, before Ray or MLflow start."""
    from dplbench.data.paths import resolve_data_root
    from dplbench.data.validate import datasets_of_units, require_data

    require_data(datasets_of_units(units), resolve_data_root(cfg.data.root), dict(cfg.data.paths))


def cmd_run(args: argparse.Namespace) -> int:
    from dplbench.units import expand_units

    cfg = _config(args)
    units = expand_units(cfg)
    if args.cfg:
        return _print_cfg(cfg, units)
    _check_data(cfg, units)
    from dplbench.orchestrate.preflight import check_before_start
    from dplbench.orchestrate.runner import run

    check_before_start(cfg)
    summary = run(cfg, units)
    from dplbench.report.api import naming_variants

    _print_tables(cfg, naming_variants(_selected(args)))  # the protocol's table, with this run's variants if any
    return 0 if summary.ok else 1


def _sweep_requested(args: argparse.Namespace) -> bool:
    return any(k == "sweep.name" or k.startswith("sweep.params") for k in _selected(args))


def cmd_dry_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if _sweep_requested(args):
        from dplbench.orchestrate.sweep import plan_sweep
        from dplbench.explain import preview_sweep

        plan = plan_sweep(cfg)
        if args.cfg:
            return _print_sweep_cfg(cfg, plan)
        print(preview_sweep(cfg, plan))
        return 0
    from dplbench.units import expand_units

    units = expand_units(cfg)
    if args.cfg:
        return _print_cfg(cfg, units)
    from dplbench.orchestrate.runner import dry_run

    print(dry_run(cfg, units))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from dplbench.orchestrate.sweep import plan_sweep, run_sweep

    if args.cfg:
        return _print_sweep_cfg(cfg, plan_sweep(cfg))
    from dplbench.orchestrate.preflight import check_before_start
    from dplbench.units import expand_units

    _check_data(cfg, expand_units(cfg))
    check_before_start(cfg)
    summary = run_sweep(cfg)
    print(summary)
    return 0 if getattr(summary, "ok", True) else 1


def cmd_table(args: argparse.Namespace) -> int:
    cfg = _config(args, validate_methods=False)
    if args.cfg:
        return _print_cfg(cfg)
    Workspace.at(cfg.run.output_dir).require_writable()
    _print_tables(cfg, _selected(args))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = _config(args, validate_methods=False)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.report.api import compare_for_protocol

    print(compare_for_protocol(cfg, _selected(args)))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    cfg = _config(args, validate_methods=False)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.report.api import plots_for_protocol

    Workspace.at(cfg.run.output_dir).require_writable()
    paths = plots_for_protocol(cfg, _selected(args))
    if not paths:
        print(f"no plots: no finished result files for protocol {cfg.protocol!r} (with the given selection) under "
              f"{cfg.run.output_dir}")
        return 1
    for path in paths:
        print(path)
    _print_index(cfg)
    return 0


def pretrain_argv(tokens: Sequence[str]) -> list[str]:
    """``steps=200 batch_size=64`` -> ``--steps 200 --batch-size 64`` (``--flags`` pass through unchanged)."""
    out: list[str] = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep and not token.startswith("-"):
            out += [f"--{key.replace('_', '-')}", value]
        else:
            out.append(token)
    return out


def cmd_pretrain_toy(args: argparse.Namespace) -> int:
    from dplbench.toy.pretrain import main as pretrain_main

    return int(pretrain_main(pretrain_argv(args.args)) or 0)


def _print_cfg(cfg, units=None) -> int:
    from dplbench.config import to_yaml

    print(to_yaml(cfg), end="")
    if units:
        from dplbench.explain import describe_units

        print("\n# what will run, per method (the protocol's recipe after overrides):")
        print(describe_units(units, str(cfg.run.device)))
    return 0


def _print_sweep_cfg(cfg, plan) -> int:
    from dplbench.config import to_yaml
    from dplbench.explain import describe_units
    from dplbench.orchestrate.sweep import apply_params
    from dplbench.units import expand_units

    print(to_yaml(cfg), end="")
    print(f"\n# sweep {plan.name}: {plan.search}, {plan.num_samples} trial(s), objective {plan.metric} ({plan.mode})")
    for key, spec in plan.params.items():
        print(f"#   {key}: {spec}")
    trials = plan.grid or [{}]
    for i, params in enumerate(trials, 1):
        title = ", ".join(f"{k}={v}" for k, v in params.items()) or "(values drawn by the sampler)"
        print(f"\n# trial {i}/{len(trials)}: {title}")
        print(describe_units(expand_units(apply_params(cfg, params), extra_overrides=params), str(cfg.run.device)))
    return 0


def _print_tables(cfg, selected) -> None:
    from dplbench.report.api import tables_for_protocol

    text, paths = tables_for_protocol(cfg, selected)
    print(text)
    for fmt, path in sorted(paths.items()):
        print(f"{fmt}: {path}")
    _print_index(cfg)


def _print_index(cfg) -> None:
    from dplbench.report.index import build_index

    md, html = build_index(cfg.run.output_dir)
    print(f"index: {html} ({md.name} next to it)")


def cmd_build_knowledge(args: argparse.Namespace) -> int:
    from dplbench.llm import require_llm_extra

    settings = _settings("build-knowledge", list(args.overrides), KNOWLEDGE_SETTINGS, prefixes=("data.paths.",))
    names = settings.get("datasets") or ([settings["dataset"]] if settings.get("dataset") else [])
    if not names:
        raise DplbenchError("build-knowledge needs dataset=NAME (or datasets=[a,b])")
    from dplbench.llm import check_llm_path

    check_llm_path(settings.get("llm.path"))
    require_llm_extra("build-knowledge")
    from dplbench.llm.build import build_datasets

    build_datasets([str(n) for n in names], settings)
    return 0


COMMANDS = {"build-knowledge": cmd_build_knowledge, "run": cmd_run, "sweep": cmd_sweep, "table": cmd_table,
            "compare": cmd_compare, "plot": cmd_plot,
            "ls": cmd_ls, "dry-run": cmd_dry_run, "validate": cmd_validate, "pretrain-toy": cmd_pretrain_toy}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    if argv[:1] == ["pretrain-toy"]:  # everything after it (--help included) belongs to the pretraining command
        args = argparse.Namespace(command="pretrain-toy", args=argv[1:])
    else:
        args = parser.parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except DplbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dplbench dry-run | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
