"""Running a recipe: the run directory, the plan, set-up, resume and the training loop.

:func:`run_recipe` is the programmatic twin of ``kdcore run``; :func:`dry_setup` is what
``kdcore check`` runs: everything a run does before its first batch, writing nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from kdcore import api_args, checkpointing, distributed
from kdcore import checkpoint as ckpt
from kdcore.data.base import ArrayDataset, FileDataset
from kdcore.data.digest import file_sizes, row_digests
from kdcore.errors import PLUGIN_FAILURES, KdcoreError
from kdcore.failures import save_error_line, save_traceback
from kdcore.history import HistoryWriter, RowCounter
from kdcore.history_layout import FILE_SIZE, INPUT_DIGEST
from kdcore.loggers import start_loggers
from kdcore.loop import Trainer
from kdcore.plan import RunPlan, build_plan, check_distributed
from kdcore.plugins import ObserverBus, PluginHost
from kdcore.prepare import check_augmentations, compile_models, load_model_checkpoints, prepare_run
from kdcore.provenance import code_changes, code_digests, recipe_changes, recorded_code
from kdcore.recipe import Recipe, resolved_now
from kdcore.rundir import RunDirLock, check_output_dir, new_run_refusal, prepare_run_dir, run_dir_of
from kdcore.runstate import ComponentContext, Run
from kdcore.torch_state import torch_state_kept


def fingerprint(recipe: Recipe, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """What a checkpoint records of how its run was started."""
    return {"recipe": recipe.to_dict(), "overrides": list(overrides)}


def _resume_state(run_dir: Path, started: dict[str, Any], plan: RunPlan
                  ) -> tuple[dict[str, Any] | None, bool]:
    """The checkpoint to resume from, and whether it is the one kept before a damaged last."""
    path = run_dir / ckpt.CHECKPOINT  # a folder of that name: refused by prepare_run_dir
    if not path.is_file():
        _check_unstarted(run_dir, started)
        logger.warning(f"{run_dir} has no checkpoint yet (the run stopped before its first "
                       f"one): starting it from the beginning")
        return None, False
    state, damaged = checkpointing.read_last(run_dir)
    _refuse_changes(f"{run_dir} was started with",
                    resolved_now(state["fingerprint"]["recipe"]), started)
    written = _history_recipe(run_dir / "history.h5")
    if written is not None:  # a history.h5 copied in from another run is not appended to
        _refuse_changes(f"{run_dir / 'history.h5'} was written by", written, started)
    position = state["position"]
    stages = plan.stages
    stage, epoch = position["stage"], position["epoch"]
    if stage >= len(stages) or epoch >= stages[stage].config.epochs or position[
            "history_rows"] != sum(st.config.epochs for st in stages[:stage]) + epoch:
        raise KdcoreError(f"the checkpoint {path} holds a position (stage {stage}, epoch "
                          f"{epoch}, {position['history_rows']} history rows) that this "
                          f"recipe's run never reaches; start again with --overwrite")
    if damaged is not None:
        logger.warning(f"{damaged}; the run goes on from the checkpoint kept before it "
                       f"({position['history_rows']} epochs in), and trains again what came after")
    return state, damaged is not None


def _refuse_changes(source: str, saved: dict[str, Any], started: dict[str, Any]) -> None:
    """Refuse to resume when ``saved`` differs from the recipe given now; ``source`` says
    where ``saved`` came from ("<run> was started with")."""
    shown = recipe_changes(saved, started["recipe"])
    if shown:
        raise KdcoreError(f"--resume: the recipe differs from the one {source}, at {shown}; "
                          f"resume with the same recipe and --set values, or start again with "
                          f"--overwrite")


def _history_recipe(path: Path) -> dict[str, Any] | None:
    """The resolved recipe a history was created with; None where it cannot be read (the
    rollback then rebuilds the file or says it is damaged)."""
    import tomllib

    from kdcore.history_layout import open_readable
    from kdcore.recipe import recipe_from_dict

    if not path.is_file():
        return None
    try:
        with open_readable(path) as f:
            text = str(f.attrs["recipe"])
        return recipe_from_dict(tomllib.loads(text)).to_dict()
    except (KdcoreError, OSError, KeyError, ValueError, TypeError, RuntimeError):
        return None


def _check_unstarted(run_dir: Path, started: dict[str, Any]) -> None:
    """Without a checkpoint, a resume starts again from the beginning: only right for a run
    killed before its first checkpoint (after its first epoch), under the same recipe."""
    import tomllib

    from kdcore.recipe import recipe_from_dict

    again = "; start again with --overwrite (it replaces that run)"
    if (run_dir / "summary.json").exists():
        raise KdcoreError(f"{run_dir} holds a finished run and no checkpoint: nothing to "
                          f"resume{again}")
    history = run_dir / "history.h5"
    if history.exists():
        rows = HistoryWriter(history).rows()  # a damaged file: one line naming --overwrite
        if rows > 1:
            raise KdcoreError(f"{run_dir} holds {rows} epochs of history but no checkpoint "
                              f"({ckpt.CHECKPOINT} is missing){again}")
    saved = run_dir / "recipe.toml"
    if saved.exists():
        try:
            recipe = recipe_from_dict(tomllib.loads(saved.read_text(encoding="utf-8")))
        except (OSError, ValueError, KdcoreError) as exc:
            raise KdcoreError(f"{saved} cannot be read ({type(exc).__name__}), so whether "
                              f"this is the same run is unknown{again}") from None
        _refuse_changes(f"{run_dir} was started with", recipe.to_dict(), started)


def _adapt_models(plan: RunPlan, run: Run) -> None:
    for stage in plan.stages:
        for comp in stage.components:
            comp.adapt_models(ComponentContext(run, comp.name, run.generator))


def dry_setup(recipe: Recipe, host: PluginHost, out: str | None = None) -> RunPlan:
    """Everything a run does before its first batch, writing nothing: the plan, the run
    directory's place, the data, the models, their checkpoints, the augmentations on a
    training sample, and every stage's components set up in turn.

    Args:
        recipe: the resolved recipe.
        host: the plugins.
        out: the run directory the run would get (default ``run.output_dir/run.name``).

    Raises:
        KdcoreError: what would stop the run while it is being set up.
    """
    recipe, host = api_args.recipe(recipe, "dry_setup"), api_args.host(host, "dry_setup", True)
    plan = build_plan(recipe, host)
    run_dir = run_dir_of(recipe, out)
    check_output_dir(run_dir)
    if run_dir.is_dir():  # a run alive there now refuses `kdcore run`, whatever its flags
        try:
            with RunDirLock() as probe:
                probe.acquire(run_dir)
        except KdcoreError as exc:
            logger.warning(str(exc))
    refusal = new_run_refusal(run_dir)
    if refusal is not None:  # the recipe is sound; the run needs a flag
        logger.warning(f"`kdcore run` without --resume or --overwrite would stop: {refusal}")
    with host.activate(), torch_state_kept(torch.device("cpu")):
        run = prepare_run(plan, host, Path("."))
        run.write_data = lambda name, values: None
        try:
            _adapt_models(plan, run)
            load_model_checkpoints(run)
            check_augmentations(run)  # one that cannot take these inputs fails now
            trainer = Trainer(plan, run, HistoryWriter(Path("/dev/null")), ObserverBus(host),
                              checkpointing.Checkpointer(Path("."), {}, 0.0, False))
            checkpointing.rehearse_stages(trainer, plan.stages)
        finally:  # a set-up that stops in a streamed pass leaves no DataLoader worker
            run.data.close_streams()
    return plan


def _console_is_terminal() -> bool:
    """Whether stderr is a terminal, to draw progress bars on; not when the process has none
    (started with ``2>&-``: ``sys.stderr`` is None)."""
    return sys.stderr is not None and sys.stderr.isatty()


def run_setup(device: torch.device) -> dict[str, Any]:
    """What a history records of where its run was started (``History.setup``)."""
    import platform

    shown, gpu = str(device), {}
    if device.type == "cuda":  # the same seed gives the same numbers on the same software
        shown += f" ({torch.cuda.get_device_name(device)})"
        gpu = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return {"device": shown, "processes": distributed.world().size,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), **gpu}


def banner(plan: RunPlan, run: Run) -> str:
    """The start-of-run summary: data, models and each stage's components in order."""
    d, r = run.data, plan.recipe
    processes = distributed.world().size
    on = (f"{run.device}" + (f" in {processes} processes" if processes > 1 else "")
          + (" with deterministic kernels" if r.run.deterministic else ""))
    lines = [
        f"run '{r.run.name}' seed {r.run.seed} on {on} -> {run.run_dir}",
        f"data {r.data.dataset}: train {len(d.train)} (noise {r.data.noise.model}, realised "
        f"rate {d.noise_rate:.3f}), val {len(d.val)}, gold {len(d.gold)}, test {len(d.test)}",
    ]
    # a role a base recipe defines that this recipe's stages leave alone (ce's teacher)
    used = {role for stage in plan.stages for role in (
        *stage.config.train, *stage.config.eval_roles,
        *(r for comp in stage.components for r in (*comp.models, *comp.roles())))}
    for role, m in run.models.items():
        n = sum(p.numel() for p in m.parameters())
        stored = ", outputs stored where frozen" if r.models[role].cache_outputs else ""
        unused = "" if role in used else ", used by no stage"
        lines.append(f"model {role}: {r.models[role].arch} ({n:,} parameters){stored}{unused}")
    for stage in plan.stages:
        cfg = stage.config
        epochs = f"{cfg.epochs} epoch" + ("" if cfg.epochs == 1 else "s")
        lines.append(f"stage {stage.index} '{cfg.name}': {epochs}, trains "
                     f"{', '.join(cfg.train) or 'nothing'}, keeps {cfg.keep}")
        for i, comp in enumerate(stage.components, 1):
            kinds = "+".join(comp.kinds()) or "lifecycle"
            lines.append(f"  {i}. {comp.name} ({comp.spec.use}, {kinds}) on "
                         f"{', '.join(comp.models)}")
    return "\n".join(lines)


def run_recipe(
    recipe: Recipe,
    *,
    out: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    host: PluginHost | None = None,
    progress: bool | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run a resolved recipe; the programmatic twin of ``kdcore run``.

    Args:
        recipe: the resolved recipe.
        out: the run directory (default ``run.output_dir/run.name``).
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: replace an earlier run in ``out``.
        host: the plugins (default: the installed ones).
        progress: a progress bar over batches (default: when stderr is a terminal).
        overrides: the ``--set`` values the recipe was resolved with (recorded).

    Returns:
        the summary (best-validation and last-epoch accuracies per model role).

    Raises:
        KdcoreError: an argument of the wrong type (a recipe's path), or what stops the run.
    """
    from kdcore.device import resolve_device

    recipe, host = api_args.recipe(recipe, "run_recipe"), api_args.host(host, "run_recipe")
    out = None if out is None else str(api_args.path(out, "out"))
    resume, overwrite = api_args.flag(resume, "resume"), api_args.flag(overwrite, "overwrite")
    progress = None if progress is None else api_args.flag(progress, "progress")
    overrides = api_args.strings(overrides, "overrides", "['run.seed=1']")
    host = host or PluginHost()
    plan = build_plan(recipe, host)
    device = resolve_device(recipe.run.device)
    timeout_s = recipe.run.distributed_timeout_s
    with (torch_state_kept(device), distributed.session(device.type, timeout_s) as world,
          RunDirLock() as lock):  # held by the rank that writes, until the run's end
        check_distributed(plan, world.size)
        return _run(plan, recipe, out=out, resume=resume, overwrite=overwrite, host=host,
                    progress=progress, overrides=overrides, lock=lock)


def _run(plan: RunPlan, recipe: Recipe, *, out: str | None, resume: bool, overwrite: bool,
         host: PluginHost, progress: bool | None, overrides: Sequence[str],
         lock: RunDirLock) -> dict[str, Any]:
    main = distributed.is_main()
    started = fingerprint(recipe, overrides)
    # rank 0 prepares the run directory; every rank then reads what it holds
    outcome: tuple[Path | None, str | None] = (None, None)
    if main:
        try:
            outcome = (prepare_run_dir(recipe, out, resume=resume, overwrite=overwrite,
                                       lock=lock), None)
        except KdcoreError as exc:
            outcome = (None, str(exc))
    run_dir, failure = distributed.broadcast(outcome)
    if failure is not None:
        raise KdcoreError(failure)
    state, fell_back = _resume_state(run_dir, started, plan) if resume else (None, False)
    if state is None and main:
        ckpt.save_text(recipe.to_toml(), run_dir / "recipe.toml")
    # loguru formats a sink's path ("{time}" and the like): braces in it are literal here
    # a path or name from a non-UTF-8 argument holds lone surrogates: escaped, not a failure
    sink = (logger.add(str(run_dir / "log.txt").replace("{", "{{").replace("}", "}}"),
                       level="INFO", encoding="utf-8", errors="backslashreplace")
            if main else None)
    run = None
    try:
        with host.activate():  # loaders and helpers called in the run see its plugins
            run = prepare_run(plan, host, run_dir)
            _adapt_models(plan, run)
            load_model_checkpoints(run)
            check_augmentations(run)
            compile_models(run)
            history = HistoryWriter(run_dir / "history.h5") if main else RowCounter()
            world = distributed.world()
            if main and world.size > 1:  # the other processes wait on it in a collective
                history.lock_timeout_s, history.reader_wait_s = distributed.reader_waits(
                    world, history.lock_timeout_s)
                history.gave_up = (f"the run's other processes stop at the process group's "
                                   f"timeout ({world.timeout_s:.0f} s): close it, then --resume")
            run.write_data = history.add_data
            data = run.data
            constants = {"noisy_label": data.train_noisy.int(), "clean_label": data.train.y.int(),
                         "clean_mask": data.train_noisy == data.train.y,
                         "sample_id": data.train_source.int()}
            if main and isinstance(data.train, ArrayDataset):
                constants[INPUT_DIGEST] = row_digests(data.train.x)
            elif main and isinstance(data.train, FileDataset):  # too slow to read all
                constants[FILE_SIZE] = file_sizes(data.train.paths)
            if state is None:
                history.create(
                    recipe_toml=recipe.to_toml(), versions=host.versions(),
                    num_classes=data.num_classes, class_names=list(data.class_names),
                    constants=constants, transition_matrix=data.transition,
                    setup={**run_setup(run.device), "code": code_digests(recipe, host)})
            else:
                history.rollback(int(state["position"]["history_rows"]))
                changes = distributed.broadcast(checkpointing.data_changes(
                    history.path, data.num_classes, data.class_names, constants) if main
                    else None)
                if changes:
                    raise KdcoreError(
                        f"--resume: the data are not those the run in {run_dir} started with "
                        f"({'; '.join(changes)}); restore them (the dataset's files, a label or "
                        f"noise file), or start again with --overwrite")
                changed = main and code_changes(recorded_code(run_dir),
                                                code_digests(recipe, host))
                if changed:
                    logger.warning(f"--resume: {', '.join(changed)} changed since the run "
                                   f"started; its epochs from here on are this code's")
            checkpointer = checkpointing.Checkpointer(
                run_dir, started, recipe.run.checkpoint_interval_s,
                background=run.device.type == "cuda", writes=main, keep_current=not fell_back)
            extra = start_loggers(host, recipe, run_dir) if main else []  # run.loggers
            bus = ObserverBus(host, extra=extra)
            trainer = Trainer(plan, run, history, bus, checkpointer,
                              progress=main and (_console_is_terminal() if progress is None
                                                 else progress))
            position = {"stage": 0, "epoch": 0}
            if state is not None:
                try:
                    checkpointer.restore_run(trainer, state)
                except (TypeError, ValueError, KeyError, AttributeError, IndexError,
                        RuntimeError) as exc:  # torch's own checks of a state that does not fit
                    raise KdcoreError(
                        f"the checkpoint {checkpointer.path} does not fit this run "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); start "
                        f"again with --overwrite") from None
                position = state["position"]
            for line in banner(plan, run).splitlines():
                logger.info(line)
            try:
                summary = trainer.fit(position, state)
            finally:  # a run that stops for any reason leaves its last checkpoint complete
                checkpointer.wait()
                run.data.close_streams()  # and no DataLoader worker behind it
        if main:
            ckpt.save_text(json.dumps(summary, indent=2), run_dir / "summary.json")
            (run_dir / ckpt.PREVIOUS).unlink(missing_ok=True)  # finished: nothing to go back to
        distributed.barrier()  # the run is finished when its files are
        return summary
    except KeyboardInterrupt as exc:  # Ctrl-C, or the SIGTERM that `kdcore run` turns into one
        stage = run.stage.name if run is not None else recipe.stages[0].name
        epoch = run.epoch + 1 if run is not None else 1
        logger.info(f"{f'stopped by {exc}' if str(exc) else 'interrupted'} in stage "
                    f"'{stage}', epoch {epoch}; --resume continues from the last checkpoint")
        raise
    except PLUGIN_FAILURES as exc:
        if sink is not None:  # the run directory keeps why the run stopped
            logger.remove(sink)
            sink = None
            if isinstance(exc, KdcoreError):
                save_error_line(exc, run_dir / "log.txt")
            else:  # a plugin's bug, or ours
                save_traceback(exc, run_dir / "log.txt")
        raise
    finally:
        if sink is not None:
            logger.remove(sink)


__all__ = ["banner", "check_output_dir", "dry_setup", "fingerprint", "prepare_run_dir",
           "run_recipe"]
