"""The ``prunekit`` command line: train, average, eval, prune, finetune, export, info, ...

Every option can come from a YAML/JSON file (``--config``), be overridden with
``--set key=value``, and then by the explicit flags. All input is validated
before any work starts; errors print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from .errors import CliError, PrunekitError

EXIT_USAGE = 2


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--model", help="registered model name (see `prunekit info --list`) or tv:<name>")
    p.add_argument("--checkpoint", help="weights to start from (state_dict or training checkpoint)")
    p.add_argument("--pruned", help="a saved pruned model folder (plan.json + weights)")
    p.add_argument("--data", help="data folder (default: $PRUNEKIT_DATA)")
    p.add_argument("--config", help="YAML or JSON file of options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option (repeatable)")
    if out:
        p.add_argument("--out", help="output folder (export: the .onnx file)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out (only once the new one is complete)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="prunekit", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train or fine-tune a model")
    _common(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--teacher", help="distill from this registered model (with "
                   "--teacher-checkpoint and --set distill_alpha=A)")
    p.add_argument("--teacher-checkpoint", help="the teacher's weights")
    p = sub.add_parser("average", help="average the weights of several trained copies of one "
                       "model (a model soup); evaluates each and the average")
    _common(p)
    p.add_argument("--checkpoints", nargs="+", help="two or more checkpoints of --model")
    p = sub.add_parser("eval", help="top-1/top-5 on the test set")
    _common(p, out=False)
    p = sub.add_parser("prune", help="prune a model to a cost target")
    _common(p)
    _budget_flags(p, latency=True)
    p.add_argument("--method", default=None,
                   help=f"pruning method: {', '.join(sorted(_methods()))} (default oneshot)")
    p.add_argument("--finetune-epochs", type=int, help="recovery fine-tuning epochs after pruning")
    p.add_argument("--calib", type=int, help="unlabeled calibration images (512)")
    table = _methods()
    trains = ", ".join(sorted(n for n, m in table.items() if "train" in m.needs))
    keeps = ", ".join(sorted(n for n, m in table.items() if getattr(m, "resumable", False)))
    p.add_argument("--epochs", type=int, help=f"methods that train ({trains}): total epochs")
    p.add_argument("--lr", type=float, help=f"methods that train ({trains}): peak learning rate")
    p.add_argument("--resume", action="store_true",
                   help=f"continue a killed run ({keeps})")
    _method_flags(p, sorted(_methods()))
    p = sub.add_parser("compress", help="the whole job: select channels, re-estimate batch "
                       "norms, recover by distillation within a time budget, evaluate, export")
    _common(p)
    p.add_argument("--target", type=float, help="fraction of the metric to keep, in (0, 1] (0.5)")
    p.add_argument("--metric", choices=["macs", "params", "latency"],
                   help="what the target counts (macs; latency: measured on this machine)")
    p.add_argument("--method", choices=["auto", "submodular", "oneshot"],
                   help="selection (auto: submodular with reweighting when there is data, "
                   "else one-shot L1)")
    p.add_argument("--budget-minutes", type=float,
                   help="minutes of recovery training (the schedule is sized to them)")
    p.add_argument("--epochs", type=int, help="recovery epochs (instead of --budget-minutes)")
    p.add_argument("--lr", type=float, help="recovery peak learning rate (0.02)")
    p.add_argument("--calib", type=int, help="unlabeled calibration images (512)")
    p.add_argument("--resume", action="store_true", help="continue a killed run")
    _latency_flags(p)
    p = sub.add_parser("reweight", help="re-solve the layers after pruned channels by least "
                       "squares on unlabeled images (recovery for any pruned model)")
    _common(p)
    p.add_argument("--calib", type=int, help="unlabeled calibration images (512)")
    p = sub.add_parser("space", help="pruning spaces: sample and evaluate subnetworks in a "
                       "MACs regime, analyse, refine, and pick the winner (prune --method space)")
    _common(p)
    _budget_flags(p)
    p.add_argument("--resume", action="store_true", help="keep the samples already evaluated")
    _method_flags(p, ["space"])
    p = sub.add_parser("finetune", help="fine-tune a saved pruned model (optionally distilling)")
    _common(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--distill", action="store_true", help="distill from --model/--checkpoint")
    p = sub.add_parser("export", help="export a pruned model to ONNX (checked with onnxruntime)")
    _common(p)
    p = sub.add_parser("latency", help="build, show and validate the model's latency table on "
                       "this machine (predicted against measured on plans of every allocation)")
    _common(p)
    p.add_argument("--target", type=float, help="the validation plans' target (0.5)")
    _latency_flags(p)
    p = sub.add_parser("info", help="groups, widths, params and MACs per layer")
    _common(p, out=False)
    p.add_argument("--list", action="store_true", help="list registered models")
    p.add_argument("--all", action="store_true", help="also show frozen groups")
    return ap


def _methods() -> dict[str, Any]:
    from .methods.protocol import methods
    return methods()


def _budget_flags(p: argparse.ArgumentParser, latency: bool = False) -> None:
    p.add_argument("--target", type=float, help="fraction of the metric to keep, in (0, 1]")
    p.add_argument("--metric", choices=["macs", "params", "latency"] if latency
                   else ["macs", "params"],
                   help="latency: measured on this machine (--device/--backend/--batch/"
                   "--threads; methods: " + ", ".join(
                       n for n, m in sorted(_methods().items())
                       if "latency" in getattr(m, "metrics", ())) + ")" if latency else None)
    p.add_argument("--groups", nargs="+", help="only prune groups matching these patterns")
    if latency:
        _latency_flags(p)


def _latency_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="latency target: cpu (default) or cuda")
    p.add_argument("--backend", help="latency target: torch (eager, default) or onnxruntime")
    p.add_argument("--batch", type=int, help="latency target: batch size served (1)")
    p.add_argument("--threads", type=int, help="latency target: intra-op threads (up to 2)")


def _method_flags(p: argparse.ArgumentParser, names: list[str]) -> None:
    """A flag per field of the methods' configs (and every field also as ``--set``),
    generated from the registry: values are read by the config's declared types."""
    from dataclasses import fields

    from .options import SHARED_OPTIONS
    table = _methods()
    owners: dict[str, list[str]] = {}
    for name in names:
        for f in fields(table[name].config):
            if f.name not in SHARED_OPTIONS:
                owners.setdefault(f.name, []).append(name)
    taken = {a.dest for a in p._actions}
    for key, who in sorted(owners.items()):
        if key not in taken:
            p.add_argument(f"--{key.replace('_', '-')}", metavar="V", type=_flag_value,
                           help=f"{', '.join(who)}: {key} (see docs/methods.md)")


DEFAULTS: dict[str, Any] = {
    "model": None, "checkpoint": None, "pruned": None, "data": None, "out": None,
    "epochs": 10, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4, "schedule": "cosine",
    "seed": 0, "subset": 0, "method": "oneshot", "target": 0.5, "metric": "macs",
    "round_to": 1, "finetune_epochs": 0,
    "finetune_lr": 0.01, "distill_alpha": 0.0, "channels_last": True, "max_steps_per_epoch": 0,
    "precision": "fp32",
    # training regularisation
    "label_smoothing": 0.0, "warmup_epochs": 0.0, "distill_temperature": 4.0, "cutout": 0,
    "groups": [],
    # the run's context (methods' own options are their configs' fields: docs/methods.md)
    "calib": 512, "executor": "inprocess", "workers": 2, "pool": 10000,
    # train: knowledge distillation from another model
    "teacher": None, "teacher_checkpoint": None,
    # average: the checkpoints to average; BN re-estimation batches (0 = keep the averaged stats)
    "checkpoints": None, "bn_batches": 0,
    # latency target (prune --metric latency, latency): None = prunekit.latency.Target's
    "device": None, "backend": None, "batch": None, "threads": None,
    # compress (None: prunekit.pipeline.CompressConfig's default)
    "budget_minutes": None, "evals": None, "holdout": None, "onnx": None,
}


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    given: set[str] = set()      # options the user set (file, --set or flag)
    if args.config:
        read = _read_config(args.config)
        cfg.update(read)
        given.update(read)
    overrides: set[str] = set()  # set on the command line (--set or a flag)
    for item in args.set:
        if "=" not in item:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        cfg[k.replace("-", "_")] = _parse_value(v)
        overrides.add(k.replace("-", "_"))
    for k, v in vars(args).items():
        if k in ("config", "set", "command") or v is None or v is False:
            continue
        cfg[k] = v
        overrides.add(k)
    given |= overrides
    from .options import method_options
    owned = frozenset().union(*method_options().values())
    unknown = sorted(set(cfg) - set(DEFAULTS) - owned - {"resume", "distill", "list", "all",
                                                          "overwrite", "min_width", "ignore"})
    if unknown:
        raise CliError(f"unknown option(s): {', '.join(unknown)}")
    from .options import check_command_options, check_method_options, check_options
    cfg = check_options(cfg)
    check_command_options(args.command, overrides)
    if args.command == "prune":
        check_method_options(cfg["method"], given)
    if args.command == "space":
        cfg["method"] = "space"
    RESOLVED_OVERRIDES.clear()
    RESOLVED_OVERRIDES.update(overrides)
    RESOLVED_GIVEN.clear()
    RESOLVED_GIVEN.update(given)
    return cfg


# the options of the last ``resolve`` given on the command line (a resumed run may
# change these, with a note; any other difference from the saved config is refused)
RESOLVED_OVERRIDES: set[str] = set()
# every option of the last ``resolve`` the user set (config file, --set or a flag)
RESOLVED_GIVEN: set[str] = set()


def _read_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"config file {path} does not exist")
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise CliError(f"cannot parse config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"config {path} must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _flag_value(v: str) -> Any:
    """A generated flag's value: JSON where it parses (numbers, lists), else the text;
    true/false stay text (a False flag value would read as "not given")."""
    return v if v.strip().lower() in ("true", "false") else _parse_value(v)


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr (exit 2; 130 on Ctrl-C, 143
    on SIGTERM) and leaves no partial output (see :mod:`prunekit.outputs`)."""
    args = build_parser().parse_args(argv)
    from .options import COMMAND_OPTIONS
    from .outputs import KEPT, OutputLock, Terminated, os_error_message, signals_raise
    KEPT.clear()
    say = _Say(args.command)
    try:
        with signals_raise(), say.warnings():
            from . import cli_commands
            cfg = resolve(args)
            # a command that writes --out (a folder, or export's file) holds it for the run
            writes = "out" in COMMAND_OPTIONS[args.command] and cfg.get("out")
            lock = OutputLock(cfg["out"]) if writes else contextlib.nullcontext()
            with lock:
                return getattr(cli_commands, f"cmd_{args.command}")(cfg) or 0
    except (CliError, PrunekitError, ValueError, FileNotFoundError, PermissionError) as exc:
        say.line("error", str(exc))
        return EXIT_USAGE
    except OSError as exc:      # a fault of the machine none of the writers expected
        say.line("error", os_error_message(exc, exc.filename or "an output file"))
        return EXIT_USAGE
    except Terminated as exc:
        say.line("stopped", f"terminated by {exc}")
        return 143
    except KeyboardInterrupt:
        say.line("stopped", "interrupted")
        return 130


class _Say:
    """The command's messages on stderr, one line each: errors (with where the work that
    a failed run kept is, for --resume) and warnings."""

    def __init__(self, command: str) -> None:
        self.command = command

    def line(self, kind: str, text: str) -> None:
        from .outputs import KEPT
        msg = " ".join([text.rstrip(". "), *KEPT] if KEPT else [text])
        msg = " ".join(msg.split())
        print(f"prunekit {self.command}: {kind}: {msg[:800]}", file=sys.stderr)

    @contextlib.contextmanager
    def warnings(self):
        import warnings
        old = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"prunekit {self.command}: warning: {' '.join(str(message).split())}",
                  file=sys.stderr)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = old


if __name__ == "__main__":
    sys.exit(main())
