"""The ``tfaug`` command line: argument parsing only; the work is done by library functions.

Each command is added to the parser by one ``add_<command>_command(subparsers)`` function
listed in :data:`COMMANDS`; it sets ``func``, a handler ``(args) -> exit code``. Library
modules are imported inside the handlers, so ``tfaug --help`` does not load TensorFlow.

Exit codes: 0 success, 1 a check found problems (also a run stopped because tfaug's source
changed under it, :class:`tfaug.source_guard.SourceChangedError`, or because its loss became
NaN or infinite, :class:`tfaug.training.errors.TrainingDivergedError`), 2 bad input (a
:class:`ConfigError` or :class:`DatasetError`); each printed as one message without a
traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfaug.config import (
    DATASETS,
    STRATEGIES,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    shipped_settings,
)
from tfaug.console import setup_console
from tfaug.data.volume import DatasetError
from tfaug.methods import (
    DEFAULT_METHOD,
    GENERATOR_MODES,
    METHODS,
    PHANTOM_VARIANT_NAMES,
    TUNED_METHODS,
    TUNERS,
)
from tfaug.source_guard import SourceChangedError
from tfaug.training.errors import TrainingDivergedError


def config_options() -> argparse.ArgumentParser:
    """A parent parser with the options every dataset command shares.

    ``--dataset``, ``--data-root``, ``--cache-dir``, ``--config`` and ``--set k=v``;
    :func:`config_from_args` turns them into a :class:`Config`.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--dataset",
        choices=DATASETS,
        default="phantom",
        help="dataset config to start from (default: phantom)",
    )
    parent.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="dataset folder (sets data.root; not needed for the phantom)",
    )
    parent.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder for the generated phantom and TFRecords (data.cache_dir)",
    )
    parent.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file merged over the dataset config, or the name of a shipped setting "
        f"({', '.join(shipped_settings())}; configs/settings)",
    )
    parent.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. train.batch_size=8",
    )
    return parent


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved :class:`Config` of the options of :func:`config_options`.

    ``--data-root`` and ``--cache-dir`` are applied after ``--config`` and ``--set``.

    Raises:
        ConfigError: unknown dataset, key or a value of the wrong type.
    """
    cfg = load_config(args.dataset, args.config, args.overrides)
    if args.data_root is not None:
        cfg.data.root = str(args.data_root.expanduser())
    if args.cache_dir is not None:
        cfg.data.cache_dir = str(args.cache_dir.expanduser())
    return cfg


def add_phantom_command(subparsers: Any) -> None:
    """``tfaug phantom --out DIR [--subjects N] [--seed S] [--variant V]``."""
    parser = subparsers.add_parser("phantom", help="generate the synthetic cardiac dataset")
    parser.add_argument("--out", type=Path, required=True, help="output folder (ACDC layout)")
    parser.add_argument("--subjects", type=int, default=100, help="number of subjects")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    variants = ", ".join(PHANTOM_VARIANT_NAMES)
    parser.add_argument("--variant", default="default", help=f"phantom variant: {variants}")
    parser.set_defaults(func=run_phantom)


def run_phantom(args: argparse.Namespace) -> int:
    from tfaug.data.phantom import generate_phantom

    try:
        out_dir = generate_phantom(
            args.out, subjects=args.subjects, seed=args.seed, variant=args.variant
        )
    except ValueError as error:  # bad --subjects, --seed or --variant
        raise ConfigError(f"tfaug phantom: {error}") from error
    print(out_dir)
    return 0


def add_data_command(subparsers: Any) -> None:
    """``tfaug data inspect|prepare`` with the :func:`config_options`."""
    parser = subparsers.add_parser("data", help="inspect a dataset or prepare its cache")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser(
        "inspect",
        parents=[config_options()],
        help="list volumes, labels and the split; report every problem (exit 1 if any)",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=run_data_inspect)
    prepare = actions.add_parser(
        "prepare",
        parents=[config_options()],
        help="preprocess every volume into the TFRecords cache and print its folder",
    )
    prepare.set_defaults(func=run_data_prepare)


def run_data_inspect(args: argparse.Namespace) -> int:
    from tfaug.data.inspect import format_inspection, inspection_report

    report = inspection_report(config_from_args(args))
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 1 if report["problems"] else 0


def run_data_prepare(args: argparse.Namespace) -> int:
    from tfaug.data.records import prepare_cache

    print(prepare_cache(config_from_args(args), progress=True).path)
    return 0


def add_train_command(subparsers: Any) -> None:
    """``tfaug train`` (also ``python train/run.py``): Algorithm 1 into a run directory."""

    parser = subparsers.add_parser(
        "train", parents=[config_options()], help="run Algorithm 1 for one method, draw and seed"
    )
    parser.add_argument(
        "--method", choices=METHODS, default=None, help=f"default: {DEFAULT_METHOD}"
    )
    parser.add_argument("--nl", type=int, default=None, help="number of labeled volumes N_L")
    parser.add_argument("--split", type=int, default=None, help="labeled draw index")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations of every stage (pre-training, generators, segmenter)",
    )
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: runs")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="tf.distribute strategy (docs/distributed.md); default: default",
    )
    parser.add_argument(
        "--force", action="store_true", help="move a finished run aside and train again"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    ablations = parser.add_argument_group(
        "ablations (each recorded in config.yaml and named in the run directory)"
    )
    ablations.add_argument(
        "--generator-mode",
        choices=GENERATOR_MODES,
        default=None,
        help="independent: L_S does not reach the generators (Table I)",
    )
    ablations.add_argument("--n-unlabeled", type=int, default=None, help="N_UL")
    ablations.add_argument("--split-seed", type=int, default=None, help="another random split")
    ablations.add_argument(
        "--no-validation",
        action="store_true",
        help="take generators and S after the fixed iterations instead of the best validation",
    )
    ablations.add_argument(
        "--tag", default=None, help="extra run-name suffix, e.g. for a σ sweep with --set"
    )
    parser.set_defaults(func=run_train)


def train_config_from_args(args: argparse.Namespace) -> Config:
    """The :func:`config_from_args` config with the ``train`` command's flags applied."""
    cfg = config_from_args(args)
    flags = {
        ("method",): args.method,
        ("split", "n_labeled"): args.nl,
        ("split", "draw"): args.split,
        ("train", "seed"): args.seed,
        ("runs_dir",): None if args.runs_dir is None else str(args.runs_dir.expanduser()),
        ("strategy",): args.strategy,
    }
    if args.iterations is not None:
        for key in ("pretrain_iterations", "generator_iterations", "segmenter_iterations"):
            flags[("train", key)] = args.iterations
    flags.update(
        {
            ("train", "generator_mode"): args.generator_mode,
            ("split", "n_unlabeled"): args.n_unlabeled,
            ("split", "split_seed"): args.split_seed,
            ("train", "model_selection"): "last" if args.no_validation else None,
        }
    )
    tags = [cfg.tag] if cfg.tag else []
    if args.n_unlabeled is not None:
        tags.append(f"nul{args.n_unlabeled}")
    if args.split_seed is not None:
        tags.append(f"splitseed{args.split_seed}")
    if args.no_validation:
        tags.append("noval")
    if args.tag:
        tags.append(args.tag)
    flags[("tag",)] = "_".join(tags) or None
    for path, value in flags.items():
        if value is not None:
            owner = cfg
            for part in path[:-1]:
                owner = getattr(owner, part)
            setattr(owner, path[-1], value)
    return config_from_dict(cfg.to_dict())  # re-checks the choices of the flags' values


def run_train(args: argparse.Namespace) -> int:
    from tfaug.runs.algorithm import plan_split, run_algorithm
    from tfaug.runs.rundir import (
        RunDirectoryError,
        RunFinishedError,
        claim_run,
        finished_error,
        open_run_directory,
    )
    from tfaug.runs.shared import check_generator_directory

    cfg = train_config_from_args(args)
    plan_split(cfg)  # bad data folder or split: exit 2 before the run directory is touched
    try:
        # The shared generators folder is checked too before --force moves the old run aside.
        check = functools.partial(check_generator_directory, cfg)
        run = open_run_directory(cfg, force=args.force, check=check)
        with claim_run(run):
            if run.finished:  # another process finished it since it was opened
                raise finished_error(run.path)
            results = run_algorithm(cfg, run, progress=not args.quiet, command=sys.argv)
    except RunFinishedError as finished:
        print(f"tfaug: {finished}", file=sys.stderr)
        return 0
    except RunDirectoryError as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(run.path, results))
    return 0


def format_summary(path: Path, results: dict[str, Any]) -> str:
    """A few lines: the run directory and the test Dice per structure."""
    lines = [f"run finished: {path}", "test 3D Dice (mean ± std over volumes):"]
    for name, stats in results["summary"].items():
        lines.append(f"  {name:<12} {stats['mean']:.3f} ± {stats['std']:.3f}  (n={stats['n']})")
    return "\n".join(lines)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _comma_list(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers like 1,3, found {text!r}") from error


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (anything else is a usage error, exit 2)."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text}")
    return value


def add_grid_command(subparsers: Any) -> None:
    """``tfaug grid`` (also ``python train/grid.py``): every (N_L, method, draw, seed) run."""
    parser = subparsers.add_parser(
        "grid",
        parents=[config_options()],
        help="run (or list) every method x draw x seed; skips finished runs, resumes others",
    )
    parser.add_argument("--nl", type=_int_list, default=(1,), help="N_L values, e.g. 1 or 1,3")
    parser.add_argument(
        "--methods", type=_comma_list, default=("none", "aff", "rdri", "mixup", "gdgi")
    )
    parser.add_argument("--draws", type=int, default=5, help="labeled draws 0..D-1")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..S-1")
    parser.add_argument("--shard", default="0/1", help="run only shard i/n (i from 0)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--generator-mode", choices=GENERATOR_MODES, default="joint")
    parser.add_argument("--iterations", type=int, default=None, help="iterations of every stage")
    parser.set_defaults(func=run_grid)


def run_grid(args: argparse.Namespace) -> int:
    from tfaug.experiments.grid import (
        GridSpec,
        execute_grid,
        format_plan,
        parse_shard,
        plan_grid,
        shard_runs,
    )

    index, count = parse_shard(args.shard)
    spec = GridSpec(
        dataset=args.dataset,
        n_labeled=args.nl,
        methods=args.methods,
        draws=args.draws,
        seeds=args.seeds,
        runs_dir=args.runs_dir.expanduser(),
        generator_mode=args.generator_mode,
        iterations=args.iterations,
        config_file=args.config,
        overrides=tuple(args.overrides),
        data_root=args.data_root,
        cache_dir=args.cache_dir,
    )
    runs = shard_runs(plan_grid(spec), index, count)
    if args.dry_run:
        print(format_plan(runs))
        return 0
    failed = execute_grid(runs)
    return 1 if failed else 0


def add_report_command(subparsers: Any) -> None:
    """``tfaug report RUNS_DIR --out DIR [--compare A,B]``: the markdown comparison of every
    finished run."""
    parser = subparsers.add_parser("report", help="compare the methods of a runs directory")
    parser.add_argument("runs_dir", type=Path, help="folder of run directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and PNGs")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="A,B",
        help="an extra Wilcoxon test of two method labels as the tables show them, e.g. "
        "'gdgi [b],aff' (repeatable)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="training times by the wall clock (default) or by the process's CPU time, which "
        "a paused process or other jobs on a shared machine do not inflate",
    )
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from tfaug.experiments.report import ReportError, parse_comparison, write_report

    try:
        compare = [parse_comparison(text) for text in args.compare]
        print(write_report(args.runs_dir, args.out, compare, args.clock))
    except ReportError as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    return 0


def add_records_command(subparsers: Any) -> None:
    """``tfaug records SOURCE DESTINATION``: copy finished runs' records, no weights."""
    parser = subparsers.add_parser(
        "records",
        help="copy the records of finished runs (config, results, metrics; no weights) to "
        "another folder, to commit them or to report them elsewhere",
    )
    parser.add_argument("source", type=Path, help="a runs folder, or a folder of records")
    parser.add_argument("destination", type=Path, help="the folder to copy into")
    parser.set_defaults(func=run_records)


def run_records(args: argparse.Namespace) -> int:
    from tfaug.experiments.records import copy_records

    try:
        outcome = copy_records(args.source, args.destination)
    except OSError as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    for name in outcome.copied:
        print(f"{name}: copied")
    for name, reason in outcome.conflicts:
        print(f"{name}: not copied, {reason}; nothing was changed there", file=sys.stderr)
    print(
        f"{len(outcome.copied)} record(s) copied to {args.destination}, "
        f"{len(outcome.present)} already there, {len(outcome.conflicts)} left out"
    )
    return 1 if outcome.conflicts else 0


def add_export_command(subparsers: Any) -> None:
    """``tfaug export RUN_DIR --format savedmodel onnx --out DIR`` (also export/export.py)."""
    parser = subparsers.add_parser(
        "export", help="export a finished run's segmenter, generators and augmenter"
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="export folder: new, empty, or a previous export (replaced as a whole)",
    )
    parser.add_argument(
        "--format",
        dest="formats",
        nargs="+",
        choices=("savedmodel", "onnx"),
        default=["savedmodel", "onnx"],
        help="formats to write (default: both)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from tfaug.deploy.export import ExportError, export_run

    try:
        manifest = export_run(args.run_dir, args.out, args.formats, opset=args.opset)
    except ExportError as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    print(f"exported {', '.join(manifest['models'])} to {args.out}")
    return 0


def add_segment_command(subparsers: Any) -> None:
    """``tfaug segment -i IN -o OUT --model DIR/segmenter.onnx`` (or the SavedModel folder)."""
    parser = subparsers.add_parser(
        "segment", help="segment NIfTI files and DICOM series with an exported model"
    )
    parser.add_argument(
        "-i",
        "--input",
        type=Path,
        required=True,
        help="NIfTI file, DICOM series folder, or a folder of NIfTI files and series folders",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="label file or folder")
    parser.add_argument(
        "--model", type=Path, required=True, help="DIR/segmenter.onnx or DIR/segmenter"
    )
    parser.add_argument("--channel", type=int, default=None, help="channel of 4D inputs")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=16, help="slices per forward pass (>= 1)"
    )
    parser.add_argument(
        "--save-probabilities", action="store_true", help="also write <name>_probabilities"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="segment inputs whose outputs exist again (default: skip them, so an interrupted "
        "folder run resumes)",
    )
    parser.add_argument(
        "--set",
        dest="preprocess_overrides",
        action="append",
        default=[],
        metavar="preprocess.KEY=VALUE",
        help="change export.json's preprocessing (repeatable); only n4, n4_shrink, "
        "n4_iterations and n4_negatives, e.g. preprocess.n4=false",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from tfaug.deploy.export import ExportError
    from tfaug.deploy.inference import segment_inputs

    try:
        report = segment_inputs(
            args.input,
            args.output,
            args.model,
            channel=args.channel,
            batch_size=args.batch_size,
            save_probabilities=args.save_probabilities,
            overwrite=args.overwrite,
            preprocess_overrides=args.preprocess_overrides,
            progress=not args.quiet,
        )
    except ExportError as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.failed:
        total = len(report.failed) + len(report.written) + len(report.skipped)
        print(
            f"tfaug: error: {len(report.failed)} of {total} input(s) could not be segmented "
            "(listed above)",
            file=sys.stderr,
        )
        return 1
    return 0


def add_tune_command(subparsers: Any) -> None:
    """``tfaug tune`` (also ``python train/tune.py``): the keras-tuner λ search (docs/tuning.md)."""

    parser = subparsers.add_parser(
        "tune",
        parents=[config_options()],
        help="search λ_adv and λ_LD (keras-tuner) on one generator stage; resumable",
    )
    parser.add_argument("--generator", choices=tuple(TUNED_METHODS), default="deformation")
    parser.add_argument("--tuner-dir", type=Path, required=True, help="the search's folder")
    parser.add_argument("--tuner", choices=TUNERS, default="random", help="default: random")
    parser.add_argument("--max-trials", type=int, default=10, help="trials in total")
    parser.add_argument(
        "--iterations", type=int, default=None, help="generator iterations of each trial"
    )
    parser.add_argument("--tune-lr", action="store_true", help="also search the learning rate")
    parser.add_argument(
        "--max-retries", type=int, default=1, help="re-runs of a crashed trial (default: 1)"
    )
    parser.add_argument("--nl", type=int, default=None, help="number of labeled volumes N_L")
    parser.add_argument("--split", type=int, default=None, help="labeled draw index")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from tfaug.experiments.tuning import format_leaderboard, run_search
    from tfaug.runs.algorithm import plan_split

    cfg = config_from_args(args)
    for owner, key, value in (
        (cfg.split, "n_labeled", args.nl),
        (cfg.split, "draw", args.split),
        (cfg.train, "seed", args.seed),
    ):
        if value is not None:
            setattr(owner, key, value)
    plan_split(cfg)  # bad data folder or split: exit 2 before the tuner directory is touched
    outcome = run_search(
        cfg,
        kind=args.generator,
        tuner_dir=args.tuner_dir.expanduser(),
        tuner=args.tuner,
        max_trials=args.max_trials,
        iterations=args.iterations,
        tune_learning_rate=args.tune_lr,
        max_retries=args.max_retries,
        progress=not args.quiet,
    )
    if outcome.role == "worker":
        print(f"worker finished; trials run here: {', '.join(outcome.trials_run) or 'none'}")
        return 0
    print(format_leaderboard(outcome.rows))
    if outcome.best_config is None:
        print("tfaug: no trial completed; nothing written", file=sys.stderr)
        return 1
    print(f"best config: {outcome.best_config}")
    return 0


COMMANDS: tuple[Callable[[Any], None], ...] = (
    add_phantom_command,
    add_data_command,
    add_train_command,
    add_grid_command,
    add_report_command,
    add_records_command,
    add_export_command,
    add_segment_command,
    add_tune_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfaug`` parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="tfaug",
        description="Semi-supervised task-driven data augmentation for medical image "
        "segmentation (TensorFlow 2 / Keras 3).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``tfaug`` command line; returns the exit code (see the module docstring)."""
    setup_console()  # before anything imports TensorFlow
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError) as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 2
    except (SourceChangedError, TrainingDivergedError) as error:
        print(f"tfaug: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
