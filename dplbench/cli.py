"""The ``dplbench`` command line: run | sweep | table | plot | ls | dry-run | pretrain-toy.

Every subcommand except ``ls`` and ``pretrain-toy`` takes ``key=value`` overrides, ``--config FILE.yaml`` and
``--cfg`` (print the resolved configuration and exit). User mistakes print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dplbench import __version__
from dplbench.argparsing import OneLineParser
from dplbench.errors import DplbenchError
from dplbench.workspace import Workspace

LS_KINDS = ("methods", "protocols", "datasets", "backbones")
LS_SETTINGS = {"methods": (), "protocols": (), "datasets": ("data.root",), "backbones": ()}

EPILOG = """examples:
  dplbench run protocol=base2novel                      # built-in toy benchmark, tiny CLIP, no downloads
  dplbench run protocol=base2novel method=coop seeds=[1] train.epochs=5
  dplbench dry-run protocol=few_shot suite=standard data.root=/data
  dplbench sweep sweep.name=drople_ablation
  dplbench table protocol=base2novel
  dplbench ls datasets data.root=/data
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with dotted paths, e.g. method.n_ctx=8 seeds=[1,2,3] run.device=cuda")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (applied before overrides)")
    parser.add_argument("--cfg", action="store_true", help="print the fully resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dplbench", description="Benchmark and ablate prompt learning for CLIP-style models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dplbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run a protocol: expand units, train and evaluate them, print the table")
    _add_config_args(run)
    run.add_argument("--force", action="store_true", help="recompute units that are already done")

    sweep = sub.add_parser("sweep", help="grid or Optuna search over config keys (e.g. the ablation sweeps)")
    _add_config_args(sweep)
    sweep.add_argument("--force", action="store_true", help="recompute units that are already done")

    for name, text in (("table", "rebuild a protocol's tables (md, tex, csv) from its result files"),
                       ("plot", "draw ablation, base-vs-novel and few-shot plots from result files"),
                       ("dry-run", "print the unit matrix, which units are done, and the resolved config")):
        _add_config_args(sub.add_parser(name, help=text))

    ls = sub.add_parser("ls", help="list methods | protocols | datasets | backbones")
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. '*coop*'")
    ls.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=/data for `ls datasets`")

    pre = sub.add_parser("pretrain-toy", help="pretrain the built-in tiny CLIP on the toy world's captions",
                         add_help=False)
    pre.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config(args: argparse.Namespace, validate_methods: bool = True):
    from dplbench.config import build_config

    overrides = list(args.overrides)
    if getattr(args, "force", False):
        overrides.append("run.force=true")
    cfg = build_config(overrides, args.config, validate_methods=validate_methods)
    cfg.run.command = ["dplbench", *getattr(args, "argv", [])]
    return cfg


def _ls_settings(kind: str, overrides: list[str]) -> dict:
    """The ``key=value`` settings ``ls <kind>`` understands (only ``data.root``, for datasets); others are errors."""
    from dplbench.config import parse_overrides
    from dplbench.errors import ConfigError, did_you_mean

    valid = LS_SETTINGS[kind]
    settings = dict(parse_overrides(overrides))
    for key in settings:
        if key not in valid:
            hint = did_you_mean(key, valid)
            raise ConfigError(f"`ls {kind}` takes no setting {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
                              + f" Valid settings: {', '.join(valid) if valid else '(none)'}")
    return settings


def cmd_ls(args: argparse.Namespace) -> int:
    from dplbench.catalog import BACKBONES, DATASETS, METHODS, PROTOCOLS

    # `dplbench ls datasets '*toy*' data.root=/x`: a key=value in the pattern slot is an override
    overrides = list(args.overrides)
    pattern = args.pattern
    if "=" in pattern:
        overrides.insert(0, pattern)
        pattern = "*"
    settings = _ls_settings(args.kind, overrides)
    registry = {"methods": METHODS, "protocols": PROTOCOLS, "datasets": DATASETS, "backbones": BACKBONES}[args.kind]
    names = registry.list(pattern)
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


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.orchestrate.preflight import check_before_start
    from dplbench.orchestrate.runner import run
    from dplbench.units import expand_units

    units = expand_units(cfg)
    check_before_start(cfg)
    summary = run(cfg, units)
    _print_tables(cfg)
    return 0 if summary.ok else 1


def cmd_dry_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.orchestrate.runner import dry_run
    from dplbench.units import expand_units

    print(dry_run(cfg, expand_units(cfg)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.orchestrate.preflight import check_before_start
    from dplbench.orchestrate.sweep import run_sweep

    check_before_start(cfg)
    summary = run_sweep(cfg)
    print(summary)
    return 0 if getattr(summary, "ok", True) else 1


def cmd_table(args: argparse.Namespace) -> int:
    cfg = _config(args, validate_methods=False)
    if args.cfg:
        return _print_cfg(cfg)
    Workspace.at(cfg.run.output_dir).require_writable()
    _print_tables(cfg)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    cfg = _config(args, validate_methods=False)
    if args.cfg:
        return _print_cfg(cfg)
    from dplbench.report.api import plots_for_protocol

    Workspace.at(cfg.run.output_dir).require_writable()
    paths = plots_for_protocol(cfg)
    if not paths:
        print(f"no plots: no finished result files for protocol {cfg.protocol!r} under {cfg.run.output_dir}")
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_pretrain_toy(args: argparse.Namespace) -> int:
    from dplbench.toy.pretrain import main as pretrain_main

    return int(pretrain_main(args.args) or 0)


def _print_cfg(cfg) -> int:
    from dplbench.config import to_yaml

    print(to_yaml(cfg), end="")
    return 0


def _print_tables(cfg) -> None:
    from dplbench.report.api import tables_for_protocol

    text, paths = tables_for_protocol(cfg)
    print(text)
    for fmt, path in sorted(paths.items()):
        print(f"{fmt}: {path}")


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "table": cmd_table, "plot": cmd_plot, "ls": cmd_ls,
            "dry-run": cmd_dry_run, "pretrain-toy": cmd_pretrain_toy}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
