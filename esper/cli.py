"""The ``esper`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .leyline import constants as C
from .leyline.constants import MAX_LEARNING_RATE
from .tolaria.rundir import LOCK_FILE

GROW_HELP = """\
Train a host network on a task while seeds germinate in its slots, train behind
the host, blend in, and are fossilized or pruned by a heuristic controller.
Writes events.jsonl, metrics.csv, growth.png, summary.json and a checkpoint to
--out, which must be new or empty unless --resume continues the run in it or
--overwrite replaces it; a run locks its directory while it lives, so a second
run on it fails at once, naming the first one's pid.

--resume DIR continues the run in DIR with the configuration its checkpoint
keeps: an option given again must match the run's, except --epochs (to extend
the run), --compile (or --no-compile), --compile-backend, --device, --data-dir,
--stop-after and --quiet.

The lifecycle follows the contract's defaults (esper.leyline.constants);
--blending-steps and --embargo-epochs depart from it, and summary.json lists
every departure under "contract_departures"."""

# Bounds of the numeric options, checked when the arguments are parsed.
MAX_SEED = C.MAX_RUN_SEED
MAX_WIDTH = 1024  # CNN base channels (the last block has 4x) or transformer embedding
MAX_LR = MAX_LEARNING_RATE
DEFAULT_COMPILE_BACKEND = C.DEFAULT_COMPILE_BACKEND
TRANSFORMER_HEADS = C.RUN_TRANSFORMER_HEADS  # the chars host's heads: they must divide --width
MAX_DIST_TIMEOUT = 86_400  # --dist-timeout, seconds: a day
# What only the command line needs (the "cli" extra): the display, the report, the digits.
CLI_EXTRA_MODULES = frozenset({"rich", "matplotlib", "sklearn"})


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, {MAX_SEED}], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def _candidates(text: str) -> int:
    value = _positive(text)
    if value > C.MAX_CANDIDATES:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {C.MAX_CANDIDATES}], got "
                                         f"{value}")
    return value


def _width(text: str) -> int:
    value = _positive(text)
    if value > MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_WIDTH}, got {value}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_LR):
        raise argparse.ArgumentTypeError(f"must be a number in (0, {MAX_LR:g}], got {text}")
    return value


def _run_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty path (which "
                                         "would be the current directory)")
    return Path(text)


def _dist_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_DIST_TIMEOUT):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds in (0, {MAX_DIST_TIMEOUT}], got {text}")
    return value


def _compile_backend(text: str) -> str:
    if text == DEFAULT_COMPILE_BACKEND:  # no need to import torch to accept the default
        return text
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown torch.compile backend {text!r}; known: "
                                         f"{', '.join(known)}")
    return text


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, except ``None``: there the help says what
    happens without the option."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _given(base: type[argparse.Action]) -> type[argparse.Action]:
    """``base``, also recording its destination in ``namespace.given`` when the option is
    given (whatever its value: ``--lr 0.05`` is given even if 0.05 is the default)."""

    class Given(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
            super().__call__(parser, namespace, values, option_string)
            namespace.given = frozenset({*getattr(namespace, "given", ()), self.dest})

    return Given


# CLI destination -> (GrowConfig field, the field's value from the option's).
_FIELDS = {
    "task": ("task", None), "epochs": ("epochs", None), "slots": ("slots", tuple),
    "max_seeds": ("max_seeds", None),
    "blueprints": ("blueprints", lambda v: tuple(v) if v else None), "seed": ("seed", None),
    "baseline": ("baseline", None), "compile": ("compile", None),
    "compile_backend": ("compile_backend", None), "data_dir": ("data_dir", None),
    "batch_size": ("batch_size", None), "lr": ("lr", None), "width": ("width", None),
    "seed_lr": ("seed_lr", None), "optimizer": ("optimizer", None),
    "schedule": ("schedule", None), "warmup_steps": ("warmup_steps", None),
    "device": ("device", None), "precision": ("precision", None),
    "limit": ("limit", None), "stop_after": ("stop_after", None), "quiet": ("quiet", None),
    "commands": ("commands", None), "blending_steps": ("blending_steps", None),
    "embargo_epochs": ("embargo_epochs", None), "blend": ("blend_algorithm", None),
    "candidates": ("candidates", None)}


def _settings(args: argparse.Namespace, only: frozenset[str] | None = None) -> dict:
    """GrowConfig keyword arguments from the options (``only`` those given, if named)."""
    settings = {}
    for dest, (name, convert) in _FIELDS.items():
        if only is None or dest in only:
            value = getattr(args, dest)
            settings[name] = convert(value) if convert is not None else value
    return settings


def _grow(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .tolaria.config import GrowConfig
    from .tolaria.run import grow, resumed_config, run_directory

    given: frozenset[str] = getattr(args, "given", frozenset())
    if ({"controller", "commands"} & given or args.resume is None) and \
            (args.controller == "external") != (args.commands is not None):
        raise ValueError("--controller external and --commands PATH go together: external "
                         "commands are read from PATH (signed with ESPER_COMMAND_KEY)")
    out = getattr(args, "out", None)
    if args.resume is None:
        config = GrowConfig(**_settings(args), out=out or Path(C.DEFAULT_RUN_DIR))
    else:
        run_dir = run_directory(args.resume)
        stored = resumed_config(args.resume)
        if stored is None:  # a checkpoint that predates kept configurations: as given
            stored = GrowConfig(**_settings(args))
        chosen = _settings(args, given)
        if "controller" in given:  # --controller heuristic says: no commands
            chosen["commands"] = args.commands
        config = replace(stored, **chosen, out=out or run_dir)
    grow(config, resume=args.resume, overwrite=args.overwrite, dist_timeout=args.dist_timeout)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_lifecycle_demo

    run_lifecycle_demo(epochs=args.epochs, seed=args.seed)
    return 0


def _add_grow(commands: argparse._SubParsersAction) -> None:
    """The ``grow`` sub-command; each option records in ``given`` that it was given."""
    grow = commands.add_parser("grow", help="grow a network on a task (the main job)",
                               description=GROW_HELP,
                               formatter_class=_DefaultsHelp)
    grow.register("action", None, _given(argparse._StoreAction))
    grow.register("action", "store", _given(argparse._StoreAction))
    grow.register("action", "store_true", _given(argparse._StoreTrueAction))
    grow.register("action", "store_const", _given(argparse._StoreConstAction))
    _add_run_options(grow)
    _add_training_options(grow)
    _add_lifecycle_options(grow)
    grow.add_argument("--dist-timeout", type=_dist_timeout, default=C.DEFAULT_DIST_TIMEOUT_S,
                      metavar="SECONDS",
                      help="under torchrun: how long a rank waits for the others in a "
                           "collective; a silent rank then stops the run with an error naming "
                           "it (the last epoch's checkpoint stays intact)")
    grow.add_argument("--quiet", action="store_true", help="plain log lines, no live display")
    grow.set_defaults(run=_grow)


def _add_run_options(grow: argparse.ArgumentParser) -> None:
    """What a run grows, and where: task, length, slots, seeds, random seed, directory."""
    grow.add_argument("--task", choices=C.RUN_TASKS, default=C.DEFAULT_RUN_TASK,
                      help="digits: scikit-learn's bundled 8x8 digits on a CNN; cifar10: the "
                           "python-pickle batches in --data-dir on a CNN; chars: a character "
                           "language model over the Python standard library's source")
    grow.add_argument("--epochs", type=_positive, default=C.DEFAULT_RUN_EPOCHS,
                      help="epochs to train (with --resume: extends the run)")
    grow.add_argument("--slots", nargs="+", default=list(C.DEFAULT_RUN_SLOTS),
                      help="injection points that get a seed slot")
    grow.add_argument("--max-seeds", type=_non_negative, default=C.DEFAULT_RUN_MAX_SEEDS,
                      help="most seeds alive at once across all slots (0: the host alone)")
    grow.add_argument("--blueprints", nargs="+", default=None,
                      help="blueprints the controller plants, in turn (default: a set per "
                           "topology)")
    grow.add_argument("--seed", type=_seed, default=C.DEFAULT_RUN_SEED,
                      help=f"random seed in [0, {MAX_SEED}]; a run is deterministic")
    grow.add_argument("--out", type=_run_dir, default=argparse.SUPPRESS,
                      help=f"run directory (default: {C.DEFAULT_RUN_DIR}; with --resume, the "
                           "run's own and no other): new or empty, unless --resume or "
                           f"--overwrite; locked (file {LOCK_FILE}, holding the pid) while the "
                           "run lives")
    existing = grow.add_mutually_exclusive_group()
    existing.add_argument("--resume", type=Path, default=None,
                          help="continue the run in this directory from its checkpoint, with "
                               "its configuration (a conflicting option is refused)")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace the run already in --out: its events, metrics, "
                               "summary, plot and checkpoint are deleted first (other files "
                               "stay)")
    grow.add_argument("--baseline", action="store_true",
                      help="also train the host alone and plot it beside the grown model")


def _add_training_options(grow: argparse.ArgumentParser) -> None:
    """How the host trains: compilation, data, batch size, learning rate, width, length."""
    grow.add_argument("--compile", choices=C.COMPILE_MODES, default=C.DEFAULT_COMPILE_MODE,
                      help="when the training step compiles: auto times the first few eager "
                           "steps and compiles only when the rest of the run would take long "
                           f"enough eagerly to repay the compile "
                           f"({C.AUTO_COMPILE_MIN_EAGER_SECONDS:.0f} s)")
    grow.add_argument("--no-compile", action="store_const", const="never", dest="compile",
                      default=argparse.SUPPRESS, help="the same as --compile never")
    grow.add_argument("--compile-backend", type=_compile_backend,
                      default=DEFAULT_COMPILE_BACKEND,
                      help="torch.compile backend of the training step (e.g. aot_eager; "
                           "torch._dynamo.list_backends() lists them)")
    grow.add_argument("--data-dir", type=Path, default=None,
                      help="directory of the CIFAR-10 python batches (cifar10 only)")
    grow.add_argument("--batch-size", type=_positive, default=C.DEFAULT_RUN_BATCH_SIZE,
                      help="training batch size")
    _add_optimizer_options(grow)
    grow.add_argument("--width", type=_width, default=None,
                      help=f"host width, at most {MAX_WIDTH}: CNN base channels or transformer "
                           f"embedding size (a multiple of {TRANSFORMER_HEADS}, the heads)")
    grow.add_argument("--limit", type=_positive, default=None,
                      help="use at most this many examples per split (quick runs)")
    grow.add_argument("--stop-after", type=_positive, default=None,
                      help="stop after this epoch (the run's schedule still spans --epochs); "
                           "continue later with --resume")


def _add_optimizer_options(grow: argparse.ArgumentParser) -> None:
    """The step's optimizer, its rates and their schedule; the device and the precision."""
    grow.add_argument("--optimizer", choices=C.OPTIMIZERS, default=C.DEFAULT_OPTIMIZER,
                      help="the training step's optimizer (torch's functional implementation, "
                           "compiled into the step); weight decay skips norms and biases")
    grow.add_argument("--lr", type=_learning_rate, default=None,
                      help=f"learning rate, in (0, {MAX_LR:g}] (default: {C.DEFAULT_RUN_LR:g} "
                           f"for sgd, {C.DEFAULT_ADAMW_LR:g} for adamw)")
    grow.add_argument("--seed-lr", type=_learning_rate, default=None,
                      help="the seeds' learning rate (default: --lr); follows the schedule too")
    grow.add_argument("--schedule", choices=C.SCHEDULES, default=C.DEFAULT_SCHEDULE,
                      help="learning-rate schedule over the run's steps (cosine: down to 0 at "
                           "the last); a tensor input of the compiled step, so never a recompile")
    grow.add_argument("--warmup-steps", type=_non_negative, default=C.DEFAULT_WARMUP_STEPS,
                      help="linear warmup steps before the schedule")
    grow.add_argument("--device", choices=C.DEVICES, default=C.DEFAULT_DEVICE,
                      help="where to train: auto picks CUDA when available (under torchrun "
                           "each rank its local GPU)")
    grow.add_argument("--precision", choices=C.PRECISIONS, default=C.DEFAULT_PRECISION,
                      help="the forward's autocast precision: bf16 (a CPU or GPU with "
                           "bfloat16), fp16 (CUDA only, with a dynamic loss scale)")


def _add_lifecycle_options(grow: argparse.ArgumentParser) -> None:
    """How seeds live: their alpha ramp, the contract's timing, and who decides."""
    grow.add_argument("--blend", choices=C.BLEND_ALGORITHMS, default=C.DEFAULT_BLEND_ALGORITHM,
                      help="alpha ramp of the seeds the controller germinates (a signed "
                           "command may name its own); another than the contract's "
                           f"{C.DEFAULT_BLEND_ALGORITHM} is a departure listed in summary.json")
    grow.add_argument("--candidates", type=_candidates, default=C.DEFAULT_CANDIDATES,
                      help="candidate seeds of the blueprint each germination plants in its "
                           "slot (a tournament: they train side by side, invisible to the "
                           "host, and the one that helps validation most at the probe alpha "
                           f"goes on; at most {C.MAX_CANDIDATES}); 1 plants one seed")
    grow.add_argument("--blending-steps", type=_positive, default=C.DEFAULT_BLENDING_STEPS,
                      help="epochs of a seed's alpha ramp; the contract's value is "
                           f"{C.DEFAULT_BLENDING_STEPS}: another is a departure listed in "
                           "summary.json")
    grow.add_argument("--embargo-epochs", type=_non_negative, default=C.DEFAULT_EMBARGO_EPOCHS,
                      help="epochs a pruned slot rests before it is reset; the contract's "
                           f"value is {C.DEFAULT_EMBARGO_EPOCHS}: another is a departure listed "
                           "in summary.json")
    grow.add_argument("--controller", choices=("heuristic", "external"), default="heuristic",
                      help="who decides germinate/fossilize/prune: the built-in heuristic, or "
                           "signed commands from --commands")
    grow.add_argument("--commands", type=Path, default=None,
                      help="JSON-lines file or FIFO of signed lifecycle commands, applied at "
                           "epoch boundaries (with --controller external; the HMAC key comes "
                           "from the environment variable ESPER_COMMAND_KEY)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``esper`` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="esper", description="Grow neural networks while they train.")
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_grow(commands)
    demo = commands.add_parser(
        "demo", help="a hand-driven lifecycle on a small CNN (no controller)")
    demo.add_argument("--epochs", type=_positive, default=C.DEFAULT_DEMO_EPOCHS,
                      help="epochs to train")
    demo.add_argument("--seed", type=_seed, default=C.DEFAULT_RUN_SEED,
                      help=f"random seed in [0, {MAX_SEED}]")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` console script; bad input exits 2 with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.command == "grow" and args.task == "chars" and args.width is not None
            and args.width % TRANSFORMER_HEADS):
        parser.error(f"argument --width: the chars task's transformer has {TRANSFORMER_HEADS} "
                     f"attention heads, so --width must be a multiple of {TRANSFORMER_HEADS}, "
                     f"got {args.width}")
    try:
        return int(args.run(args))
    except (ValueError, OSError) as error:  # DatasetError and CheckpointError are ValueErrors
        parser.exit(2, f"esper: error: {error}\n")
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in CLI_EXTRA_MODULES:
            raise
        parser.exit(2, f"esper: error: esper {args.command} needs the command line's extras "
                       f"(no module {error.name!r}): pip install 'esper[cli]'\n")


if __name__ == "__main__":
    sys.exit(main())
