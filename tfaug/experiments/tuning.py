"""The λ search: keras-tuner over λ_adv, λ_LD (and optionally the learning rate).

Each trial runs the generator stage of Algorithm 1 (docs/method.md §2, step 2) for one kind
(``deformation`` or ``intensity``) with the trial's λs and a budget of iterations, starting
from ONE pre-trained S shared by the whole search; its objective is the stage's best
validation Dice (mean foreground 3D Dice, maximised). The tuner directory ``DIR`` holds::

    DIR/search.yaml          what this search is (checked when it is resumed)
    DIR/search/              keras-tuner's project: oracle.json, trial_<id>/trial.json
    DIR/pretrain/            the shared run directory of the pre-trained S
    DIR/trials/trial_<id>/   one run directory per trial (config.yaml, checkpoints/, tb/,
                             attempts.jsonl); checkpoints/pretrain links to DIR/pretrain
    DIR/leaderboard.json     every trial, best first (written at the end)
    DIR/best_config.yaml     the best λs as a ``train/run.py --config`` snippet

Re-running the same command resumes: keras-tuner reloads its oracle (``overwrite=False``),
a trial that was running when the process died is retried with the same values, and its run
directory resumes from its last checkpoint. Distributed tuning uses keras-tuner's chief/worker
mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``); see
docs/tuning.md.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import yaml

from tfaug.config import Config, ConfigError, completed_config, config_differences
from tfaug.io import write_json_atomic, write_text_atomic
from tfaug.methods import TUNED_METHODS, TUNERS, generator_stage
from tfaug.runs.algorithm import Algorithm, configure_tensorflow
from tfaug.runs.rundir import RunDirectory
from tfaug.training.loop import TrainingDivergedError

OBJECTIVE = "val_dice"
PAPER_LAMBDA_LD = (1e-2, 1e-3, 1e-4)  # the three values of the paper (Sec. IV)
LAMBDA_ADV_RANGE = (1e-2, 10.0)
LAMBDA_LD_RANGE = (1e-5, 1e-1)
LEARNING_RATE_RANGE = (1e-4, 1e-2)
GRID_LEARNING_RATES = (1e-4, 3e-4, 1e-3)


class LambdaHyperModel(keras_tuner.HyperModel):
    """Declares the search space; ``build(hp)`` returns the trial's :class:`Config`.

    ``random``/``bayesian``: λ_adv in [1e-2, 10] and λ_LD in [1e-5, 1e-1], both sampled on a
    log scale; with ``tune_learning_rate`` the Adam learning rate of every network of the
    stage in [1e-4, 1e-2] (log). ``grid``: the paper's search, λ_adv fixed at the base
    config's value and λ_LD in {1e-2, 1e-3, 1e-4}; the learning rate in {1e-4, 3e-4, 1e-3}.
    Nothing is trained here.

    Args:
        base: the search's config (its ``train.generator_iterations`` is the trial budget).
        grid: declare the grid's discrete values instead of ranges.
        tune_learning_rate: also search ``train.learning_rate``.
    """

    def __init__(self, base: Config, *, grid: bool, tune_learning_rate: bool) -> None:
        super().__init__(name="lambda_search")
        self.base = base
        self.grid = grid
        self.tune_learning_rate = tune_learning_rate

    def build(self, hp: keras_tuner.HyperParameters) -> Config:
        cfg = copy.deepcopy(self.base)
        if self.grid:
            cfg.train.lambda_adv = hp.Fixed("lambda_adv", self.base.train.lambda_adv)
            cfg.train.lambda_ld = hp.Choice("lambda_ld", list(PAPER_LAMBDA_LD))
        else:
            cfg.train.lambda_adv = hp.Float("lambda_adv", *LAMBDA_ADV_RANGE, sampling="log")
            cfg.train.lambda_ld = hp.Float("lambda_ld", *LAMBDA_LD_RANGE, sampling="log")
        if self.tune_learning_rate:
            cfg.train.learning_rate = (
                hp.Choice("learning_rate", list(GRID_LEARNING_RATES))
                if self.grid
                else hp.Float("learning_rate", *LEARNING_RATE_RANGE, sampling="log")
            )
        return cfg


def build_oracle(
    tuner: str, *, max_trials: int, seed: int, max_retries: int = 1
) -> keras_tuner.Oracle:
    """The keras-tuner oracle of ``tuner`` (one of :data:`TUNERS`), maximising val Dice.

    Args:
        tuner: ``random``, ``bayesian`` or ``grid``.
        max_trials: trials to run at most (the grid stops earlier when exhausted).
        seed: the oracle's sampling seed (keras-tuner treats 0 as "random": pass ≥ 1).
        max_retries: re-runs of a trial that raised an error before it is marked failed.
    """
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    oracles = {
        "random": keras_tuner.oracles.RandomSearchOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        "grid": keras_tuner.oracles.GridSearchOracle,
    }
    if tuner not in oracles:
        raise ConfigError(f"--tuner {tuner!r}: expected one of {', '.join(TUNERS)}")
    if tuner == "bayesian" and importlib.util.find_spec("sklearn") is None:
        raise ConfigError(
            "--tuner bayesian: keras-tuner's BayesianOptimization needs scikit-learn, which is "
            "not installed; run pip install 'keras-tuner[bayesian]' or choose --tuner random"
        )
    return oracles[tuner](
        objective=objective, max_trials=max_trials, seed=seed, max_retries_per_trial=max_retries
    )


def tuner_role() -> str:
    """``"local"``, ``"chief"`` or ``"worker"``, from keras-tuner's environment variables.

    keras-tuner is distributed when ``KERASTUNER_ORACLE_IP`` is set; the process whose
    ``KERASTUNER_TUNER_ID`` contains ``chief`` serves the oracle, the others run trials.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


@dataclass(frozen=True)
class TunerDirectory:
    """The paths of a search (see the module docstring)."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "search.yaml"

    @property
    def pretrain(self) -> RunDirectory:
        return RunDirectory(self.path / "pretrain")

    def trial(self, trial_id: str) -> RunDirectory:
        return RunDirectory(self.path / "trials" / f"trial_{trial_id}")

    @property
    def leaderboard(self) -> Path:
        return self.path / "leaderboard.json"

    @property
    def best_config(self) -> Path:
        return self.path / "best_config.yaml"


class LambdaTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """A keras-tuner tuner whose trial is Algorithm 1's generator stage.

    ``run_trial`` builds the trial's config with :class:`LambdaHyperModel`, links the shared
    pre-trained S into the trial's run directory (pre-training it first, under a file lock,
    if no process has yet), trains (S, G, D) for the trial budget and returns
    ``{"val_dice": best validation Dice}``. A diverged trial (NaN loss) is marked failed and
    not retried; any other error is retried ``max_retries`` times by the oracle.

    Args:
        hypermodel: the search space and the base config.
        oracle: from :func:`build_oracle`.
        directory: the tuner directory.
        kind: ``deformation`` or ``intensity``.
        progress: progress bars and keras-tuner's per-trial tables.
    """

    def __init__(
        self,
        hypermodel: LambdaHyperModel,
        oracle: keras_tuner.Oracle,
        directory: TunerDirectory,
        *,
        kind: str,
        progress: bool = True,
    ) -> None:
        super().__init__(oracle, hypermodel, directory=str(directory.path), project_name="search")
        self.dirs = directory
        self.kind = kind
        self.progress = progress
        self.trials_run: list[str] = []
        if not progress:
            self.oracle.verbose = 0

    def search(self) -> None:
        """Run trials until the oracle stops (the chief serves the oracle instead)."""
        if tuner_role() == "chief":
            self.save()
            serve_oracle(self.oracle)
            return
        super().search()

    def run_trial(self, trial: keras_tuner.engine.trial.Trial) -> dict[str, float]:
        cfg = self.hypermodel.build(trial.hyperparameters)
        run = self.dirs.trial(trial.trial_id)
        _record_attempt(run, self.tuner_id)
        self.trials_run.append(trial.trial_id)
        ensure_pretrained(self.hypermodel.base, self.dirs, progress=self.progress)
        _link_pretrain(run, self.dirs.pretrain)
        write_text_atomic(run.config_path, cfg.to_yaml())
        keras.backend.clear_session()
        algorithm = Algorithm(cfg, run, progress=self.progress)
        try:
            algorithm.prepare()
            algorithm.train_generator(self.kind)
        except TrainingDivergedError as error:
            raise keras_tuner.errors.FailedTrialError(str(error)) from error
        finally:
            algorithm.writer.close()
        return {OBJECTIVE: float(algorithm.stages[generator_stage(self.kind)].best_score)}


def serve_oracle(oracle: keras_tuner.Oracle, poll_seconds: float = 1.0) -> None:
    """Serve ``oracle`` to the workers over gRPC until the search is over (the chief's job).

    keras-tuner's own ``oracle_chief.start_server``, with two differences: it polls every
    ``poll_seconds`` (keras-tuner sleeps 20 s) and stops the server before returning. The
    search is over once a worker was told to stop and no trial is running and every worker
    has been told to stop. Address: ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(
            f"chief: cannot listen on {address}; choose a free KERASTUNER_ORACLE_PORT"
        )
    server.start()
    while not (servicer.stop_triggered and exit_chief(oracle)):
        time.sleep(poll_seconds)
    server.stop(grace=2.0)


def ensure_pretrained(base: Config, dirs: TunerDirectory, *, progress: bool = True) -> None:
    """Prepare the data cache and pre-train S once per search, into ``DIR/pretrain``.

    Runs under an exclusive lock on ``DIR/.pretrain.lock`` (``fcntl.flock``), so concurrent
    workers prepare and pre-train once; the others wait and then find the stage finished.
    Resumable like any stage. Does not train a generator.
    """
    dirs.path.mkdir(parents=True, exist_ok=True)
    with open(dirs.path / ".pretrain.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = dirs.pretrain
        if (run.stage("pretrain") / "done.json").is_file():
            return
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.config_path, base.to_yaml())
        algorithm = Algorithm(base, run, progress=progress)
        try:
            algorithm.prepare()
            algorithm.pretrain()
        finally:
            algorithm.writer.close()


def _link_pretrain(run: RunDirectory, pretrain: RunDirectory) -> None:
    """Make ``run``'s pretrain stage a relative symlink to the shared one."""
    link = run.stage("pretrain")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        target = os.path.relpath(pretrain.stage("pretrain"), link.parent)
        link.symlink_to(target, target_is_directory=True)


def _record_attempt(run: RunDirectory, tuner_id: str) -> None:
    """Append who started this trial, and when, to ``attempts.jsonl`` in its run directory."""
    run.path.mkdir(parents=True, exist_ok=True)
    line = {
        "tuner_id": tuner_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(run.path / "attempts.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")


def read_attempts(run: RunDirectory) -> list[dict[str, Any]]:
    """The ``attempts.jsonl`` lines of a trial's run directory (empty if never started)."""
    path = run.path / "attempts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class TrialRow:
    """One line of the leaderboard.

    Attributes:
        trial_id: keras-tuner's trial id (``"00"``, ``"01"``, ...).
        status: ``COMPLETED``, ``RUNNING``, ``FAILED`` or ``INVALID`` (keras-tuner's).
        val_dice: best validation mean foreground 3D Dice of the trial, in [0, 1]
            (``None`` unless completed).
        values: the trial's hyperparameters (``lambda_adv``, ``lambda_ld``[, ``learning_rate``]).
        best_step: iteration of the kept generator (``None`` unless completed).
        tuner_ids: the ``KERASTUNER_TUNER_ID`` of every attempt, in order.
    """

    trial_id: str
    status: str
    val_dice: float | None
    values: dict[str, float]
    best_step: int | None
    tuner_ids: list[str]


@dataclass(frozen=True)
class SearchOutcome:
    """What :func:`run_search` did in this process.

    Attributes:
        role: ``local``, ``chief`` or ``worker`` (see :func:`tuner_role`).
        rows: the leaderboard, best first (empty on a worker, which cannot see it).
        trials_run: ids of the trials this process ran (or resumed).
        best_config: the written ``best_config.yaml``, ``None`` without a completed trial.
    """

    role: str
    rows: list[TrialRow]
    trials_run: list[str]
    best_config: Path | None


def run_search(
    cfg: Config,
    *,
    kind: str,
    tuner_dir: Path,
    tuner: str = "random",
    max_trials: int = 10,
    iterations: int | None = None,
    tune_learning_rate: bool = False,
    max_retries: int = 1,
    progress: bool = True,
) -> SearchOutcome:
    """Run (or resume, or join as a worker) a λ search; write the leaderboard and best config.

    Args:
        cfg: the base config (dataset, split, seed, networks, pre-training schedule).
        kind: the generator stage to tune, ``deformation`` or ``intensity``.
        tuner_dir: the search's folder (created; reused to resume).
        tuner: ``random``, ``bayesian`` or ``grid``.
        max_trials: trials in total, counting those of earlier sessions; raise it to extend
            a finished search.
        iterations: each trial's budget of generator iterations (default: the config's
            ``train.generator_iterations``).
        tune_learning_rate: also search the learning rate.
        max_retries: re-runs of a trial that raised an error before it is marked failed.
        progress: progress bars and keras-tuner's trial tables.

    Returns:
        The :class:`SearchOutcome`; on the chief or a local search, ``DIR/leaderboard.json``
        and ``DIR/best_config.yaml`` are written. Nothing is printed here.

    Raises:
        ConfigError: a bad argument, or ``tuner_dir`` holds a search with other settings.
    """
    if kind not in TUNED_METHODS:
        raise ConfigError(f"--generator {kind!r}: expected one of {', '.join(TUNED_METHODS)}")
    for flag, value, least in (
        ("--max-trials", max_trials, 1),
        ("--iterations", iterations, 1),
        ("--max-retries", max_retries, 0),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} {value}: expected an integer ≥ {least}")
    if cfg.train.model_selection != "best":
        raise ConfigError(
            f"train.model_selection={cfg.train.model_selection!r}: a trial is scored by its best "
            "validation Dice, so the search needs validation; set train.model_selection=best"
        )
    configure_tensorflow(cfg)
    base = copy.deepcopy(cfg)
    base.method = TUNED_METHODS[kind]
    if iterations is not None:
        base.train.generator_iterations = iterations
    dirs = TunerDirectory(Path(tuner_dir))
    _check_spec(
        dirs,
        {
            "kind": kind,
            "tuner": tuner,
            "tune_learning_rate": tune_learning_rate,
            "config": base.to_dict(),
        },
    )
    hypermodel = LambdaHyperModel(base, grid=tuner == "grid", tune_learning_rate=tune_learning_rate)
    oracle = build_oracle(
        tuner, max_trials=max_trials, seed=1 + base.train.seed, max_retries=max_retries
    )
    search = LambdaTuner(hypermodel, oracle, dirs, kind=kind, progress=progress)
    search.search()
    role = tuner_role()
    if role == "worker":
        return SearchOutcome(role, [], search.trials_run, None)
    rows = leaderboard(search.oracle, dirs, kind)
    write_json_atomic(dirs.leaderboard, {"kind": kind, "trials": [asdict(r) for r in rows]})
    best = write_best_config(rows, dirs.best_config, kind=kind, tuner_dir=dirs.path)
    return SearchOutcome(role, rows, search.trials_run, best)


def _check_spec(dirs: TunerDirectory, spec: dict[str, Any]) -> None:
    """Record the search's settings, or check them against those recorded."""
    if dirs.spec.is_file():
        recorded = yaml.safe_load(dirs.spec.read_text(encoding="utf-8"))
        # A search recorded by an earlier tfaug lacks the config keys added since.
        recorded["config"] = completed_config(recorded.get("config") or {})
        if recorded != spec:
            changed = config_differences(recorded, spec)
            raise ConfigError(
                f"{dirs.spec}: this tuner directory holds a search with other settings "
                f"(differs in {', '.join(changed)}). Re-run with the same settings to resume "
                "(--max-trials may grow), or choose another --tuner-dir."
            )
        return
    write_text_atomic(dirs.spec, yaml.safe_dump(spec, sort_keys=False))


def leaderboard(oracle: keras_tuner.Oracle, dirs: TunerDirectory, kind: str) -> list[TrialRow]:
    """Every trial of the oracle, completed ones by validation Dice (best first), then others."""
    rows = []
    for trial in oracle.trials.values():
        done = dirs.trial(trial.trial_id).stage(f"generator_{kind}") / "done.json"
        completed = trial.status == "COMPLETED" and trial.score is not None
        rows.append(
            TrialRow(
                trial_id=trial.trial_id,
                status=trial.status,
                val_dice=float(trial.score) if completed else None,
                values={k: float(v) for k, v in trial.hyperparameters.values.items()},
                best_step=(
                    json.loads(done.read_text(encoding="utf-8"))["best_step"]
                    if completed and done.is_file()
                    else None
                ),
                tuner_ids=[a["tuner_id"] for a in read_attempts(dirs.trial(trial.trial_id))],
            )
        )
    return sorted(rows, key=lambda r: (r.val_dice is None, -(r.val_dice or 0.0), r.trial_id))


def format_leaderboard(rows: list[TrialRow]) -> str:
    """The leaderboard as a fixed-width text table (best first)."""
    names = sorted({name for row in rows for name in row.values})
    header = ["rank", "trial", "status", *names, "val Dice", "best it", "run by"]
    lines = [header]
    for rank, row in enumerate(rows, start=1):
        lines.append(
            [
                str(rank) if row.val_dice is not None else "-",
                row.trial_id,
                row.status.lower(),
                *(f"{row.values[n]:.3g}" if n in row.values else "-" for n in names),
                f"{row.val_dice:.4f}" if row.val_dice is not None else "-",
                str(row.best_step) if row.best_step is not None else "-",
                ",".join(row.tuner_ids) or "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def write_best_config(
    rows: list[TrialRow], path: Path, *, kind: str, tuner_dir: Path
) -> Path | None:
    """Write the best trial's values as a ``train`` config snippet; ``None`` if none completed.

    The snippet holds only ``train.lambda_adv``, ``train.lambda_ld`` (and
    ``train.learning_rate`` if searched); ``load_config(dataset, config_file=path)`` and
    ``train/run.py --config path`` merge it over the dataset config. It does not carry the
    other settings of the search (pass them again with ``--set``).
    """
    completed = [row for row in rows if row.val_dice is not None]
    if not completed:
        return None
    best = completed[0]
    header = (
        f"# Best of the λ search in {tuner_dir} (generator {kind}): trial {best.trial_id},\n"
        f"# best validation Dice {best.val_dice:.4f} at iteration {best.best_step}.\n"
        "# Use: python train/run.py --config <this file> [--set ... as in the search]\n"
    )
    snippet = {"train": dict(sorted(best.values.items()))}
    write_text_atomic(path, header + yaml.safe_dump(snippet, sort_keys=False))
    return path
