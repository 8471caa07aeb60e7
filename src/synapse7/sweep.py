"""Hyper-parameter sweeps with Optuna: TPE sampling, pruning from a Lightning callback, resumable storage.

The search space is a YAML file (`configs/sweep.yaml` is the default):

    base:                 # RunConfig sections every trial starts from (the budget: epochs, batches, size)
      data: {image_size: 64, batch_size: 32}
      model: {weights: none}
      train: {epochs: 3, limit_train_batches: 50}
    pruner: {n_startup_trials: 3, n_warmup_steps: 1}    # optuna MedianPruner arguments (optional)
    space:                # "section.field": a range {low, high[, log, step]} or {choices: [...]}
      train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
      model.input: {choices: [fft, rgb, rgb+fft]}

Integer bounds give an integer parameter, float bounds a float one. Each trial trains with `synapse7.train.train`
into OUT/trials/<number>/ and scores its best val ROC-AUC. With `--storage sqlite:///sweep.db` the study lives in
the database: several processes can share it, and a sweep that was interrupted (Ctrl+C, or killed: then after
the heartbeat grace period) re-runs each unfinished trial with the same parameters, resuming its training from
the trial's last.ckpt. The best trial's config is written as best.yaml, which `synapse7 train --config` accepts.
"""

from __future__ import annotations

import csv
import io
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from synapse7.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    read_yaml_mapping,
)
from synapse7.io import atomic_path, atomic_write_text, ensure_writable_dir

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
MONITOR = "val_auc"
PRUNER_OPTIONS = (
    "n_startup_trials",
    "n_warmup_steps",
    "interval_steps",
    "n_min_trials",
)  # optuna MedianPruner


def default_space_path() -> Path:
    """The search space shipped with the package."""
    return Path(str(resources.files("synapse7") / "configs" / "sweep.yaml"))


@dataclass(frozen=True)
class Param:
    """One searched field: a categorical choice or a numeric range."""

    section: str
    field: str
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.field}"

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    base: dict[str, dict[str, Any]]
    params: tuple[Param, ...]
    pruner: dict[str, Any]

    def config(self, values: dict[str, Any], data_root: str | None) -> RunConfig:
        """The RunConfig of one trial: base, then the sampled values, then the data root."""
        sections = {s: dict(self.base.get(s) or {}) for s in SECTIONS}
        for name, v in values.items():
            section, key = name.split(".", 1)
            sections[section][key] = v
        if data_root is not None:
            sections["data"]["root"] = str(data_root)
        return config_from_dict(sections)


def _number(v: Any, where: str) -> float | int:
    # PyYAML reads 1e-4 (no dot) as a string; accept it as the number it means.
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {v!r}") from None
    return v


def _param(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: space.{name}"
    section, _, key = name.partition(".")
    if section not in SECTIONS or key not in {f.name for f in fields(SECTIONS[section])}:
        raise ConfigError(
            f"{where}: unknown field; use section.field with a section of data/model/train and a "
            f"field of that config (e.g. train.lr, model.input)"
        )
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping {{low, high}} or {{choices}}, got {spec!r}")
    unknown = set(spec) - {"choices", "low", "high", "log", "step", "type"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        return Param(section, key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: give choices, or low and high")
    low, high = _number(spec["low"], where), _number(spec["high"], where)
    if spec.get("type") == "float":
        low, high = float(low), float(high)
    if low > high:
        raise ConfigError(f"{where}: low > high")
    step = _number(spec["step"], where) if spec.get("step") is not None else None
    return Param(section, key, low=low, high=high, log=bool(spec.get("log", False)), step=step)


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and check a search-space YAML (default: the packaged configs/sweep.yaml)."""
    p = Path(path) if path is not None else default_space_path()
    raw = read_yaml_mapping(p, "search space file", "sections base, space, pruner")
    if not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise ConfigError(
            f"search space file {p} needs a non-empty 'space' mapping (and optional 'base', 'pruner')"
        )
    unknown = set(raw) - {"base", "space", "pruner"}
    if unknown:
        raise ConfigError(f"search space file {p}: unknown section(s) {', '.join(sorted(unknown))}")
    base = raw.get("base") or {}
    try:
        config_from_dict(base)  # fail now on a bad base section, not in the first trial
    except ConfigError as e:
        raise ConfigError(f"search space file {p}, base: {e}") from e
    pruner = dict(raw.get("pruner") or {})
    unknown = set(pruner) - set(PRUNER_OPTIONS)
    if unknown:
        raise ConfigError(
            f"search space file {p}, pruner: unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PRUNER_OPTIONS)}"
        )
    params = tuple(_param(str(k), v, str(p)) for k, v in raw["space"].items())
    return SearchSpace(base=base, params=params, pruner=pruner)


@dataclass(frozen=True)
class SweepResult:
    study_name: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_yaml: Path | None
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    out_dir: Path


def _storage(url: str | None, heartbeat: int) -> Any:
    import optuna

    if url is None:
        return None
    # The heartbeat lets another process (or a restart) tell a killed trial from a running one.
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat)


def _requeue_interrupted(study: Any) -> list[int]:
    """Enqueue once more, with the same parameters, each failed trial that was interrupted rather than broken.

    A trial that raised an error records it in its "error" attribute and is not retried. The re-run resumes
    from the interrupted trial's run folder (its last.ckpt), so no finished training step is repeated; it can
    itself be interrupted and re-run again.
    """
    from optuna.trial import TrialState

    latest: dict[str, Any] = {}  # run folder -> the last trial that used (or will use) it
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        run_dir = t.user_attrs.get("run_dir") or t.user_attrs.get("resume_dir")
        if run_dir:
            latest[run_dir] = t
    requeued = []
    for run_dir, t in latest.items():
        if t.state == TrialState.FAIL and "error" not in t.user_attrs:
            study.enqueue_trial(
                t.params, user_attrs={"resume_dir": run_dir, "resumes_trial": t.number}, skip_if_exists=False
            )
            requeued.append(t.number)
    return requeued


def run_sweep(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    space: str | Path | SearchSpace | None = None,
    n_trials: int = 10,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str = "synapse7",
    seed: int = 0,
    heartbeat: int = 30,
    progress: bool = False,
    keep_checkpoints: bool = False,
    callbacks: Callable[[Any], list] | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or continue) a study until it holds n_trials finished trials or `timeout` seconds pass.

    n_trials counts the study's completed and pruned trials, in every process sharing the storage, so running
    the same command again after an interruption only does what is left. Finished trials other than the best
    lose their checkpoints (a few hundred MB each) unless keep_checkpoints. callbacks(trial) may add Lightning
    callbacks to each trial's Trainer (used by the tests to interrupt a trial).
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from optuna_integration import PyTorchLightningPruningCallback

    from synapse7.train import train

    say = log or (lambda m: print(m, file=sys.stderr))
    sp = space if isinstance(space, SearchSpace) else load_search_space(space)
    out = ensure_writable_dir(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats, fail_stale_trials and the matplotlib plots are "experimental" in optuna; say so once, here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage(storage, heartbeat),
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 1, **sp.pruner}),
    )
    # The sampler's random stream is not stored with the study: offset the seed by the trials already there,
    # so a restarted (or second) process does not draw the first process's parameters again.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    if storage is not None:
        optuna.storages.fail_stale_trials(study)  # killed trials whose heartbeat stopped
    requeued = _requeue_interrupted(study)
    if requeued:
        say(
            f"sweep: re-running interrupted trial(s) {', '.join(map(str, requeued))} from their last checkpoint"
        )
    interrupted: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial) for p in sp.params}
        cfg = sp.config(values, str(data_root))
        resume_dir = trial.user_attrs.get("resume_dir")
        run_dir = Path(resume_dir) if resume_dir else out / "trials" / f"{trial.number:04d}"
        resume = (run_dir / "last.ckpt").is_file()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", cfg.to_dict())
        say(
            f"sweep: trial {trial.number}{' (resumed)' if resume else ''}: "
            + ", ".join(f"{k}={v}" for k, v in values.items())
        )
        extra = [
            PyTorchLightningPruningCallback(trial, monitor=MONITOR),
            *(callbacks(trial) if callbacks else []),
        ]
        try:
            res = train(cfg, run_dir, resume=resume, progress=progress, callbacks=extra)
        except (KeyboardInterrupt, SystemExit):
            interrupted.append(trial.number)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")  # broken, not interrupted: not retried
            raise
        if res.best_val_auc is None:
            trial.set_user_attr("error", "no validation score")
            raise RuntimeError(f"trial {trial.number}: training produced no {MONITOR}")
        return res.best_val_auc

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    t0 = time.time()
    if finished() < n_trials:
        try:
            done = [MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
            if not keep_checkpoints:
                done.append(_drop_checkpoints)
            study.optimize(
                objective, timeout=timeout, catch=(Exception,), gc_after_trial=True, callbacks=done
            )
        except (KeyboardInterrupt, SystemExit):
            # Ctrl+C (Lightning turns it into SystemExit): mark the trial failed now, so a restart re-runs it
            # at once instead of waiting for its heartbeat to go stale.
            for number in interrupted:
                study.tell(number, state=TrialState.FAIL)
            say("sweep: interrupted; run the same command again to continue")
            raise
    return _finish(study, out, time.time() - t0)


def _drop_checkpoints(study: Any, _trial: Any) -> None:
    """Delete the checkpoints of every finished trial but the best: best.yaml retrains any of them."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value).number if complete else None
    for t in finished:
        if t.number != best and t.user_attrs.get("run_dir"):
            for ckpt in Path(t.user_attrs["run_dir"]).glob("*.ckpt"):
                ckpt.unlink(missing_ok=True)


def _finish(study: Any, out: Path, seconds: float) -> SweepResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    atomic_write_text(out / "trials.csv", trials_csv(trials))
    best_yaml = None
    best = max(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        best_yaml = out / "best.yaml"
        header = (
            f"# synapse7 sweep, study {study.study_name!r}: best of {len(complete)} completed trial(s) = "
            f"trial {best.number}, val ROC-AUC {best.value:.4f}\n"
            f"# use: synapse7 train --config {best_yaml.name} --data ROOT --out RUN (flags override it)\n"
        )
        atomic_write_text(best_yaml, header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
    write_sweep_plots(study, out)
    return SweepResult(
        study_name=study.study_name,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        best_yaml=best_yaml,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        seconds=round(seconds, 1),
        out_dir=out,
    )


def trials_csv(trials: list[Any]) -> str:
    """One row per trial: number, state, value, duration, every parameter, and the error if any."""
    names = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "value", "seconds", *names, "resumes_trial", "error"])
    for t in trials:
        secs = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else ""
        )
        w.writerow(
            [
                t.number,
                t.state.name,
                "" if t.value is None else f"{t.value:.6f}",
                f"{secs:.1f}" if secs != "" else "",
                *(t.params.get(n, "") for n in names),
                t.user_attrs.get("resumes_trial", ""),
                t.user_attrs.get("error", ""),
            ]
        )
    return buf.getvalue()


def write_sweep_plots(study: Any, out: Path) -> list[Path]:
    """history.png (always, once a trial completed) and importances.png (when optuna can compute them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    written = []
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return written
    plots = {"history.png": ovm.plot_optimization_history, "importances.png": ovm.plot_param_importances}
    for name, plot in plots.items():
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as e:  # importances need >= 2 completed trials that differ
            print(f"sweep: {name} not drawn: {e}", file=sys.stderr)
            plt.close("all")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
