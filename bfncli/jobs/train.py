"""``bfn train``: the training loop, on one process or many (HF accelerate).

Exactness by construction: every random draw of optimizer step s (which examples, the time t, the
flow sample, the Monte Carlo noise, dropout) comes from generators seeded by (seed, s, micro-step,
rank) alone. A checkpoint therefore only needs the weights, the EMA, the optimizer state and a few
counters; resuming from it replays the very same computation, bit for bit, wherever the run was
interrupted (an epoch boundary, mid-epoch, mid-accumulation, mid-checkpoint-write).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch

from bfncli import compiled
from bfncli.atomic_files import remove_stale_partials, write_text_atomic
from bfncli.config import BFNConfig, resolve_config
from bfncli.errors import UserError
from bfncli.jobs.data_order import DataOrder, mix
from bfncli.jobs.initial_weights import load_initial_weights
from bfncli.jobs.run_directory import (
    append_metrics,
    check_resumed_config,
    choose_run_dir,
    resume_command,
    start_run_dir,
    truncate_metrics,
)
from bfncli.jobs.run_lock import RunLock
from bfncli.jobs.runtime import require_memory, setup
from bfncli.jobs.stop_signals import StopFlag
from bfncli.jobs.progress_lines import ProgressLines
from bfncli.jobs.training_result import TrainingResult
from bfncli.log import bar_disabled, logger, plain_progress
from bfncli.networks.layout import use_fast_layout
from bfncli.training_state import (
    load_training_checkpoint,
    restore_optimizer,
    save_training_checkpoint,
    set_aside_newer,
)

# ------------------------------------------------------------------------------ the config
def fit_to_data(cfg: BFNConfig, spec) -> BFNConfig:
    """Make the network's data shape follow the data (the user's own images or text)."""
    net = cfg.network.model_dump()
    tree = cfg.to_dict()
    if spec.kind == "text":
        if cfg.network.kind != "transformer":
            raise UserError("text data needs a text network; choose a text preset (e.g. --preset pyhelp)")
        net["input_adapter"]["seq_len"] = tree["data"]["seq_len"] = spec.shape[0]
    else:
        if cfg.network.kind == "transformer":
            raise UserError("image data needs an image network; choose an image preset (e.g. --preset default)")
        h, w, c = spec.shape
        if h != w:
            raise UserError(f"the U-Nets need square images; the data is {w}x{h}: crop or pad them")
        adapter = net["input_adapter"]
        adapter.update(input_shape=[h, w], input_channels=c)
        net["image_size"] = h
        net["output_adapter"]["output_channels"] = c
        # The adapter's features are the network's input channels: the pixels' channels, plus 2t-1
        # (or, with position features, a projection to output_height).
        channels = adapter["output_height"] if adapter["add_pos_feats"] else c + int(adapter["add_mask"])
        adapter["output_height"] = channels
        if cfg.network.kind == "unet_vdm":
            net["input_channels"] = channels
            net["output_adapter"]["input_height"] = net["embedding_dim"] + channels
        else:
            net["in_channels"] = channels
            skip = (net["model_channels"] if net["project_input"] else channels) if net["skip"] else 0
            net["output_adapter"]["input_height"] = net["out_channels"] + skip
        if spec.num_bins:
            tree["data"]["num_bins"] = spec.num_bins
            if cfg.output.kind in ("discretized_normal", "delta"):
                tree["output"]["num_bins"] = spec.num_bins
    if cfg.network.num_classes:  # a class-conditional network has one class per class of the data
        if not spec.class_names:
            raise UserError("network.num_classes > 0 trains a class-conditional model, which needs labelled data "
                            "(digits, MNIST, CIFAR-10, an image folder with one subfolder per class, or a tensor file "
                            "with 'labels'); set network.num_classes=0 for an unconditional model")
        net["num_classes"] = len(spec.class_names)
        tree["data"]["class_names"] = list(spec.class_names)
    tree["network"] = net
    return resolve_config(base=tree, environ={})


# ------------------------------------------------------------------------------- the loop
def run_training(
    cfg: BFNConfig,
    preset: Optional[str] = None,
    run_name: Optional[str] = None,
    runs_dir: Path = Path("runs"),
    resume: Optional[str] = None,
    deterministic: bool = False,
    init: Optional[str] = None,
    progress: bool = True,
) -> TrainingResult:
    """The work of ``bfn train``: the run's folder, its final checkpoint and its last metrics."""
    from bfncli.data import data_spec, load_split

    if init and resume:
        raise UserError("--init starts a new run from given weights, --resume continues a run from its own "
                        "checkpoints: give one of them")
    runtime = setup(deterministic)
    labelled = cfg.network.num_classes > 0
    cfg = fit_to_data(cfg, data_spec(cfg.data, labels=labelled))
    # before the run folder exists, so that weights that do not fit leave nothing behind
    initial = load_initial_weights(init, cfg, preset, runtime.is_main) if init else None
    lock = RunLock()  # one writer per run: held by the main process from choosing the folder to the end
    try:
        run_dir, start_path = _on_main(runtime, lambda: choose_run_dir(Path(runs_dir), run_name, preset, resume, True,
                                                                       claim=lock.acquire))
        if start_path is not None:  # before any data is touched
            from bfncli.checkpoint import RELEASE_NAME, read_info

            info = read_info(start_path / RELEASE_NAME)
            check_resumed_config(run_dir, info.config.to_dict(), cfg.to_dict())
            if not _steps_left(run_dir, start_path, info.step, cfg.train.steps):
                if runtime.is_main:
                    logger.info(f"run '{run_dir.name}' has already trained its {info.step} steps "
                                f"({start_path.name}); nothing to do (ask for more with --max-steps)")
                return TrainingResult.of(run_dir, start_path / RELEASE_NAME)
        train_set = load_split(cfg.data, "train", labels=labelled)
        val_set = load_split(cfg.data, "val", labels=labelled) if cfg.train.val_every <= cfg.train.steps else None
        release = Trainer(cfg, run_dir, runtime, train_set, val_set, initial, progress).run(start_path)
        return TrainingResult.of(run_dir, release)
    finally:
        lock.release()


def _steps_left(run_dir: Path, start_path: Path, step: int, steps: int) -> bool:
    """Whether a resumed run has steps left to train; one already past train.steps is an error
    (resuming it would train nothing and end with 'done')."""
    if step > steps:
        raise UserError(f"run '{run_dir.name}' is already at step {step} ({start_path.name}), past the {steps} steps "
                        f"asked for (--max-steps / train.steps); ask for more than {step} to train on, or resume "
                        "from an earlier checkpoint with --resume PATH")
    return step < steps


def _on_main(runtime, fn):
    """Run ``fn`` on the main process only and give every process its result (or its error), so that
    all processes agree on the run directory even when it is named after the clock."""
    if runtime.world_size == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box = [None]
    if runtime.is_main:
        try:
            box = [("ok", fn())]
        except UserError as err:
            box = [("error", (str(err), err.exit_code))]
    status, value = broadcast_object_list(box)[0]
    if status == "error":
        raise UserError(*value)
    return value


class Trainer:
    def __init__(self, cfg: BFNConfig, run_dir: Path, runtime, train_set, val_set, initial=None, progress=True):
        self.cfg = cfg
        self.progress = progress  # False: no progress bar
        self.initial = initial  # weights to start from (bfn train --init), or None
        self.run_dir = run_dir
        self.runtime = runtime
        self.train_set = train_set
        self.val_set = val_set
        t = cfg.train
        per_step = runtime.world_size * t.accumulate
        if t.batch_size % per_step:
            raise UserError(f"train.batch_size ({t.batch_size}) must be divisible by processes x accumulate "
                            f"({runtime.world_size} x {t.accumulate})")
        self.micro_batch = t.batch_size // per_step
        example_bytes = 4 * math.prod(train_set.spec.shape) * (cfg.flow.n_classes if cfg.flow.kind == "discrete" else 1)
        require_memory(4 * self.micro_batch * example_bytes, f"a micro-batch of {self.micro_batch} examples",
                       "lower train.batch_size, or raise train.accumulate", runtime.device)
        self.order = DataOrder(len(train_set), t.batch_size, self.micro_batch, t.seed)

    # ---------------------------------------------------------------------------- set-up
    def _build(self):
        from accelerate import Accelerator

        from bfncli.model import BFN

        t = self.cfg.train
        precision = t.mixed_precision
        if precision != "no" and not torch.cuda.is_available():
            if self.runtime.is_main:
                logger.warning(f"note: train.mixed_precision={precision} needs a GPU; training in float32")
            precision = "no"
        self.precision = precision  # what the run really uses
        self.accelerator = Accelerator(mixed_precision=precision, log_with=t.trackers or None,
                                       project_dir=str(self.run_dir), cpu=not torch.cuda.is_available())
        torch.manual_seed(t.seed)  # initial weights: the same on every process
        model = BFN(self.cfg)
        if self.initial is not None:
            model.net.load_state_dict(self.initial.tensors)  # the EMA copied below starts from them too
        device = self.accelerator.device
        use_fast_layout(model.net, device)  # channels-last U-Nets where faster (the EMA copy too)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        groups = self._param_groups(model)
        # On a GPU the step never waits for the host: AdamW is fused and skips a non-finite step itself
        # (found_inf), the EMA update is weighted by the step's finiteness, and the flags are read when a
        # metrics line is written. fp16's gradient scaler keeps its own skipping (and the host check).
        self.device_checks = _device_checks(device, precision)
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.optim.lr, betas=self.cfg.optim.betas,
                                      eps=self.cfg.optim.eps, weight_decay=self.cfg.optim.weight_decay,
                                      fused=True if self.device_checks or device.type == "cuda" else None)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema.to(device)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.params = [p for p in self.unwrapped.parameters()]
        self.ema_params = [p for p in self.ema.parameters()]
        self.compiling = compiled.wanted(t.compile, device, t.steps, job="train", model=model,
                                         examples=t.batch_size // self.runtime.world_size)
        if self.compiling:  # after the EMA's deep copy, which must not share the compiled loss
            compiled.compile_loss(self.unwrapped, device, cuda_graphs=self.runtime.world_size == 1,
                                  setting=f"train.compile={t.compile}")
        self.first_step_clock = compiled.FirstCallClock("the first training step", enabled=self.compiling and self.runtime.is_main)

    def _param_groups(self, model):
        o = self.cfg.optim
        if o.decay_groups and hasattr(model.net, "get_optim_groups"):
            return model.net.get_optim_groups(o.weight_decay)
        return [{"params": list(model.parameters()), "weight_decay": o.weight_decay}]

    def lr_at(self, step: int) -> float:
        warm = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * (min(1.0, (step + 1) / warm) if warm else 1.0)

    # ---------------------------------------------------------------------------- resume
    def _start(self, start_path: Optional[Path]) -> dict[str, Any]:
        state = {"step": 0, "skipped_steps": 0, "nonfinite_streak": 0, "best_val_loss": None}
        if start_path is None:  # a new run, or one that stopped before its first checkpoint
            if self.runtime.is_main:
                start_run_dir(self.run_dir, self.cfg.to_yaml())
            self.accelerator.wait_for_everyone()
            return state
        tensors, info = load_training_checkpoint(start_path)
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        ema_sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.unwrapped.net.load_state_dict(model_sd)
        self.ema.net.load_state_dict(ema_sd)
        restore_optimizer(self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                          {k: v for k, v in tensors.items() if k.startswith("optim.")}, info["optimizer"])
        # (checkpoints from before bfn 0.1 kept a best "total" instead: not comparable, so not carried over)
        for key in ("step", "skipped_steps", "nonfinite_streak", "best_val_loss"):
            state[key] = info.get(key, state[key])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and isinstance(info.get("grad_scaler"), dict):
            scaler.load_state_dict(info["grad_scaler"])
        if self.runtime.is_main:
            try:
                for note in set_aside_newer(start_path.parent, state["step"]):
                    logger.warning(f"set aside a checkpoint newer than the one resumed from: {note}")
                truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
                remove_stale_partials(self.run_dir)
                write_text_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())  # with any resumable changes
            except OSError as err:
                raise UserError(f"cannot update the run folder '{self.run_dir}': {err.strerror or err}; free disk "
                                "space or fix its permissions (its checkpoints are intact)", exit_code=1) from None
            logger.info(f"resuming {self.run_dir.name} from step {state['step']} ({start_path.name})")
        return state

    # ------------------------------------------------------------------------------ steps
    def _micro_step(self, step: int, micro: int) -> torch.Tensor:
        rank, world = self.runtime.rank, self.runtime.world_size
        slot = micro * world + rank
        data_gen = torch.Generator().manual_seed(mix(self.cfg.train.seed, "data", step, slot))
        index = self.order.indices(step, slot)
        x = self.train_set.batch(index, data_gen)
        if x.device.type == "cpu" and self.accelerator.device.type == "cuda":
            x = x.pin_memory()  # so that the copy below is asynchronous
        x = x.to(self.accelerator.device, non_blocking=True)
        classes = self._classes(index, step, slot)
        flow_gen = torch.Generator(device=self.accelerator.device).manual_seed(mix(self.cfg.train.seed, "flow", step,
                                                                                   slot))
        torch.manual_seed(mix(self.cfg.train.seed, "dropout", step, slot))  # dropout inside the network
        with self.accelerator.autocast():
            return self.model(x, self.cfg.train.loss_steps, flow_gen, classes)

    def _classes(self, index, step: int, slot: int) -> Optional[torch.Tensor]:
        """The examples' classes, each replaced by "no class" with probability train.class_dropout, so
        that one network learns the conditional and the unconditional model (classifier-free
        guidance, Ho & Salimans 2022). None for an unconditional network (whose random streams stay
        as they were)."""
        k = self.cfg.network.num_classes
        if not k:
            return None
        classes = self.train_set.labels_of(index)
        generator = torch.Generator().manual_seed(mix(self.cfg.train.seed, "classes", step, slot))
        dropped = torch.rand(classes.shape, generator=generator) < self.cfg.train.class_dropout
        return torch.where(dropped, k, classes).to(self.accelerator.device, non_blocking=True)

    def _step(self, step: int) -> dict[str, Any]:
        """One optimizer step (with accumulation). Returns its metrics; skips non-finite steps."""
        t = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        total = torch.zeros((), device=self.accelerator.device)
        for micro in range(t.accumulate):
            last = micro == t.accumulate - 1
            sync = self.accelerator.no_sync(self.model) if not last and self.runtime.world_size > 1 else _nothing()
            with sync:
                loss = self._micro_step(step, micro)
                self.accelerator.backward(loss / t.accumulate)
            total += loss.detach()
        loss = self.accelerator.reduce(total / t.accumulate, "mean") if self.runtime.world_size > 1 else total / t.accumulate
        grad_norm = self.accelerator.clip_grad_norm_(self.params, t.grad_clip_norm)
        # Under fp16 the gradient scaler skips steps whose gradients overflow (and lowers its scale).
        finite = torch.isfinite(loss) if self.precision == "fp16" else torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.device_checks:
            _inner(self.optimizer).found_inf = (~finite).float()  # fused AdamW leaves the weights alone then
            self.optimizer.step()
            weight = finite.float() * (1 - t.ema_decay)
            moved = torch._foreach_sub([p.detach() for p in self.params], self.ema_params)
            torch._foreach_mul_(moved, weight)
            torch._foreach_add_(self.ema_params, moved)
        elif bool(finite):
            self.optimizer.step()
            torch._foreach_lerp_(self.ema_params, [p.detach().float() for p in self.params], 1 - t.ema_decay)
        self.optimizer.zero_grad(set_to_none=True)
        # tensors: read (a host synchronisation on a GPU) only when a metrics line is written
        return {"loss": loss.detach(), "grad_norm": grad_norm, "lr": self.lr_at(step), "finite": finite}

    # -------------------------------------------------------------------------------- run
    def run(self, start_path: Optional[Path]) -> Path:
        from tqdm import tqdm

        self._build()
        state = self._start(start_path)
        t, main = self.cfg.train, self.runtime.is_main
        if t.trackers:
            self.accelerator.init_trackers(self.run_dir.name, config=self.cfg.to_dict())
        bar = tqdm(total=t.steps, initial=state["step"], desc=self.run_dir.name, unit="step", file=sys.stderr,
                   disable=bar_disabled(None if self.progress else True), dynamic_ncols=True)
        # no bar in a log file: plain lines instead
        lines = ProgressLines(t.steps, state["step"]) if main and self.progress and plain_progress() else None
        if main:
            logger.info(f"run folder: {self.run_dir}")
        metrics_file = self.run_dir / "metrics.jsonl"
        if self.initial is not None and main:
            append_metrics(metrics_file, self.initial.record())
        clock, clock_step = time.perf_counter(), state["step"]
        last_saved = state["step"] if start_path is not None else -1
        self.model.train()
        pending: list[tuple[int, Any]] = []  # (step, finite flag) not yet read back from the device
        with StopFlag() as stop:
            while state["step"] < t.steps:
                step = state["step"]
                with self.first_step_clock:
                    m = self._step(step)
                state["step"] = step + 1
                pending.append((step, m["finite"]))
                done = state["step"]
                saving = done % t.checkpoint_every == 0 or done == t.steps
                validating = self.val_set is not None and done % t.val_every == 0
                logging = done % t.log_every == 0 or done == t.steps
                if logging or saving or validating or not self.device_checks or stop.signum is not None:
                    self._settle(pending, state)
                if main and logging:
                    now = time.perf_counter()
                    rate = (done - clock_step) / max(now - clock, 1e-9)
                    clock, clock_step = now, done
                    record = {"step": done, "loss": m["loss"].item(), "grad_norm": float(m["grad_norm"]), "lr": m["lr"],
                              "steps_per_s": rate, "examples_per_s": rate * t.batch_size,
                              "skipped_steps": state["skipped_steps"]}
                    append_metrics(metrics_file, record)
                    if t.trackers:
                        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=done)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                bar.update()
                if lines is not None:
                    lines.update(done, m["loss"])  # a device tensor: read only when a line is said
                if validating:
                    self._validate(done, state, metrics_file)
                stopping = self._agree(stop.signum is not None)
                if saving or stopping:
                    self._settle(pending, state)
                    self._save(done, state)
                    last_saved = done
                if stopping:
                    bar.close()
                    if main:
                        folder = self.run_dir / "checkpoints" / f"step-{done:08d}"
                        logger.warning(f"stopped at step {done}; checkpoint in {folder}; resume with: "
                                       f"{resume_command(self.run_dir)}")
                    raise SystemExit(stop.exit_code)
        bar.close()
        self._settle(pending, state)
        if last_saved != state["step"]:
            self._save(state["step"], state)
        self.accelerator.end_training()
        release = self.run_dir / "checkpoints" / f"step-{state['step']:08d}" / "model.safetensors"
        if main:
            logger.info(f"done: {state['step']} steps; EMA weights in {release}")
        return release

    def _settle(self, pending: list, state: dict[str, Any]) -> None:
        """Count the skipped steps whose finiteness flags are still on the device (one host
        synchronisation for all of them), in order; stop after train.max_nonfinite_steps in a row."""
        if not pending:
            return
        flags = torch.stack([torch.as_tensor(f) for _, f in pending]).tolist() if self.device_checks else \
            [bool(f) for _, f in pending]
        steps = [s for s, _ in pending]
        pending.clear()
        t = self.cfg.train
        for step, finite in zip(steps, flags):
            if finite:
                state["nonfinite_streak"] = 0
                continue
            state["skipped_steps"] += 1
            state["nonfinite_streak"] += 1
            if self.runtime.is_main:
                logger.warning(f"step {step + 1}: non-finite loss or gradients; step skipped")
            if state["nonfinite_streak"] >= t.max_nonfinite_steps:
                raise UserError(
                    f"stopping: {state['nonfinite_streak']} non-finite steps in a row at step {step + 1}; "
                    "lower optim.lr or train.grad_clip_norm, or resume from an earlier checkpoint",
                    exit_code=1)

    def _agree(self, flag: bool) -> bool:
        """Every process stops at the same step if any of them was signalled."""
        if self.runtime.world_size == 1:
            return flag
        value = torch.tensor(float(flag), device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, "sum") > 0)

    def _save(self, step: int, state: dict[str, Any]) -> None:
        if self.runtime.is_main:
            info = {k: state[k] for k in ("skipped_steps", "nonfinite_streak", "best_val_loss")}
            info["data_position"] = self.order.position(step)
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:  # fp16: the loss scale, so that a resumed run skips the same steps
                info["grad_scaler"] = scaler.state_dict()
            save_training_checkpoint(self.run_dir, step, self.cfg, self.unwrapped.net.state_dict(),
                                     self.ema.net.state_dict(), _inner(self.optimizer), info,
                                     keep=self.cfg.train.keep_checkpoints)
            if state["best_val_loss"] is None:
                # Not validated yet (the first validation comes at train.val_every, or never without
                # a validation split): best.safetensors is the newest EMA weights until then, so that
                # every command naming it works from the first checkpoint on.
                from bfncli.checkpoint import save_checkpoint

                save_checkpoint(self.run_dir / "best.safetensors", self.ema.net.state_dict(), self.cfg, "ema", step)
        self.accelerator.wait_for_everyone()

    @cached_property
    def val_examples(self):
        """The validation split, or with train.max_val_batches a random sample of it (text8: every
        offset is an example), drawn once so that every validation compares like with like; never a
        prefix of consecutive, overlapping windows."""
        t = self.cfg.train
        n = t.max_val_batches * t.val_batch_size
        if t.max_val_batches > 0 and len(self.val_set) > n:
            return _RandomSample(self.val_set, n, mix(t.seed, "val-sample"))
        return self.val_set

    def _validate(self, step: int, state: dict[str, Any], metrics_file: Path) -> None:
        """The EMA weights' continuous-time loss on the validation split (what the official code
        validates with); the best one so far is kept as best.safetensors. The reconstruction loss
        is logged beside it but does not decide: it measures the data's quantisation, not progress."""
        from bfncli.jobs.evaluate import estimate

        t = self.cfg.train
        result = estimate(self.ema, self.val_examples, 0, t.val_repeats, t.val_batch_size, mix(t.seed, "val", step),
                          self.runtime, progress=False, classes="labels" if self.cfg.network.num_classes else None)
        loss = result["loss_mean"]
        best = state["best_val_loss"] is None or loss < state["best_val_loss"]
        if self.runtime.is_main:
            append_metrics(metrics_file, {"step": step, "val_loss": loss, "val_recon": result["recon_mean"],
                                          "val_total": result["total_mean"], "val_best": best})
            if best:
                from bfncli.checkpoint import save_checkpoint

                save_checkpoint(self.run_dir / "best.safetensors", self.ema.net.state_dict(), self.cfg, "ema", step)
        if best:
            state["best_val_loss"] = loss
        self.model.train()


class _RandomSample:
    """n examples of an example set drawn at random without replacement, in a fixed order."""

    def __init__(self, examples, n: int, seed: int):
        self.examples, self.spec = examples, examples.spec
        generator = torch.Generator().manual_seed(seed)
        if len(examples) <= 2**24:
            self.indices = torch.randperm(len(examples), generator=generator)[:n]
        else:  # too many for a permutation: 2n draws, the distinct ones (sorted by unique) shuffled, n kept
            distinct = torch.unique(torch.randint(0, len(examples), (2 * n,), generator=generator))
            self.indices = distinct[torch.randperm(len(distinct), generator=generator)][:n]

    def __len__(self):
        return len(self.indices)

    def batch(self, index, generator=None):
        return self.examples.batch(self.indices[index], generator)

    def labels_of(self, index):
        return self.examples.labels_of(self.indices[index])


def _device_checks(device: torch.device, precision: str) -> bool:
    """Whether a step's finiteness stays on the device (a GPU, where reading it would stall the queue)."""
    return device.type == "cuda" and precision != "fp16"


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


