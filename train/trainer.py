"""The training loop: one optimizer step = grad_accum micro-steps on every rank.

Per step, in order: fetch this rank's slice of the global batch, forward/backward each
micro-batch (DDP syncs gradients only on the last one), clip, then ONE small all-reduce
carrying [loss, non-finite grad norm, stop signal] so that all ranks agree on the loss
they log, on skipping a non-finite update and on stopping, then the optimizer step.
Everything that must survive a restart (weights, optimizer, step, tokens seen, loader
position, RNG states) goes into each checkpoint, which is what makes a killed and
resumed run bitwise identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, prune_checkpoints,
                                 remove_partial_checkpoints, save_checkpoint, strip_wrapper_prefixes)
from pipeline.config import Config, ConfigError
from pipeline.distributed import (DistEnv, all_reduce_sum, any_rank, autocast_dtype, barrier,
                                  broadcast_from_main, gather_to_main)
from pipeline.documents import document_layout
from pipeline.failpoints import fail_point
from pipeline.loggers import Loggers, require_packages
from pipeline.model import GPT
from pipeline.optimizer import build_optimizer
from pipeline.provenance import git_commit
from pipeline.shards import ShardError, load_shard_set, verify_shards
from train import EXIT_NONFINITE, EXIT_OK, EXIT_PREEMPTED
from train.evaluation import InLoopEval
from train.init_from import find_source, load_weights
from train.loader import StepBatch, TrainLoader
from train.metrics import MetricsLog, finite_or_none, mfu, peak_flops
from train.precision import set_tf32
from train.prefetch import Prefetcher
from train.resume import (capture_rng, check_model_shape, check_optimizer_name, check_state, config_changes,
                          find_resume_checkpoint, restore_rng)
from train.rundir import METRICS, trim_metrics, write_exit, write_launch_files
from train.schedule import grad_accum_steps, lr_at
from train.signals import PreemptionFlag

def check_shards(shards: list, env: DistEnv) -> None:
    """Every train shard's sha256 against the manifest before the first step (each rank
    checks a share): a flipped bit on disk would otherwise be trained on silently.
    One corrupt shard stops every rank with the same error."""
    problems = gather_to_main(verify_shards(shards, env.rank, env.world_size), env)
    found = broadcast_from_main([p for mine in problems for p in mine] if env.is_main else None, env)
    if found:
        more = f" (and {len(found) - 1} more corrupt shard(s))" if len(found) > 1 else ""
        raise ShardError(found[0] + more)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: str, env: DistEnv, flag: PreemptionFlag,
                 argv: list[str]):
        tc = cfg.train
        self.cfg, self.run_dir, self.env, self.flag = cfg, Path(run_dir), env, flag
        self.device = env.device
        self.dtype = autocast_dtype(tc.dtype, self.device)
        if self.device.type == "cuda":
            set_tf32(tc.tf32)
        require_packages(tc.loggers)  # a missing TensorBoard/W&B stops the run before any work
        self.grad_accum = grad_accum_steps(tc.total_batch_size, tc.micro_batch_size, tc.seq_len, env.world_size)
        shards = load_shard_set(cfg.data.dir)
        check_shards(shards.split("train"), env)
        self.loader = TrainLoader(shards.split("train"), shards.fingerprint, tc.seq_len, tc.micro_batch_size,
                                  self.grad_accum, env.rank, env.world_size, cfg.data.seed, cfg.data.shuffle)
        self.batches = Prefetcher(self.loader, self.device)
        self.evals = InLoopEval(cfg, shards, env, self.dtype)
        ckpt = find_resume_checkpoint(resume, self.run_dir)

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = GPT(cfg.model).to(self.device)
        init = find_source(tc.init_from) if tc.init_from and ckpt is None else None
        if init is not None:  # before the optimizer exists: it is built around these parameters
            self.model.load_state_dict(load_weights(init))
        self.optimizer, self.fused = build_optimizer(self.model, cfg.optim, self.device.type)
        self.step, self.tokens_seen, self.saved_step = 0, 0, -1
        notes = self._restore(ckpt) if ckpt is not None else []
        attention = cfg.data.document_attention
        self.within_documents = attention == "within" or (attention == "auto" and self.loader.masks is not None)
        self.train_model = self._wrap(self.model)
        self.flops_per_token = self.model.flops_per_token(tc.seq_len)
        self.peak = peak_flops(self.device, tc.peak_tflops)

        if env.is_main:
            try:
                write_launch_files(self.run_dir, cfg, argv, env.world_size, self.device, ckpt,
                                   init.describe() if init is not None else None)
            except OSError as err:
                raise ConfigError(f"--run-dir {self.run_dir}: cannot write the run directory ({err})") from None
            trim_metrics(self.run_dir, self.step if ckpt is not None else -1)
            remove_partial_checkpoints(self.run_dir)
        sinks = Loggers(tc.loggers, self.run_dir, self.run_dir.resolve().name, cfg.to_dict(),
                        git_commit() if env.is_main else {},
                        enabled=env.is_main)
        self.log = MetricsLog(self.run_dir / METRICS, env.is_main, self.step, tc.max_steps, sinks)
        self._describe(shards, ckpt, notes)

    # -- setup ---------------------------------------------------------------------------

    def _restore(self, ckpt: Path) -> list[str]:
        loaded, state = load_checkpoint(ckpt, ("model", "optimizer"), map_location="cpu")
        check_state(state, ckpt)
        check_model_shape(state, self.cfg, ckpt)
        check_optimizer_name(state, self.cfg, ckpt)
        # The checkpoint brings the optimizer's state (moments, step counts); this run's config
        # keeps authority over its hyperparameters and kernel choice (weight decay, betas, fused).
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(strip_wrapper_prefixes(loaded["model"]))
            self.optimizer.load_state_dict(loaded["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{ckpt}: weights or optimizer state do not fit this model ({err})") from None
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens_seen, self.saved_step = state["step"], state["tokens_seen"], state["step"]
        if self.env.rank < len(state["rng"]):
            restore_rng(state["rng"][self.env.rank], self.device)
        notes = config_changes(state, self.cfg)
        if state.get("world_size") != self.env.world_size:
            notes.append(f"world size {state.get('world_size')} -> {self.env.world_size} "
                         f"(data continues at global sequence {self.loader.position})")
        return notes

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.train.compile:
            model = torch.compile(model)
        if self.env.distributed:
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    def _describe(self, shards, ckpt: Path | None, notes: list[str]) -> None:
        cfg, tc, env, say = self.cfg, self.cfg.train, self.env, self.log.print
        m = cfg.model
        say(f"model: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} embd, {self.model.num_params():,} params; "
            f"{self.flops_per_token / 1e6:.1f} MFLOP/token")
        if m.gpt2_incompatible():
            say(f"model options: {', '.join(m.gpt2_incompatible())}")
        say(f"data: {cfg.data.dir}: {len(self.loader.arrays)} train shards, {self.loader.total_tokens:,} tokens "
            f"= {self.loader.sequences_per_epoch:,} sequences/epoch; shuffle {cfg.data.shuffle}")
        say(f"batch: {tc.total_batch_size:,} tokens/step = {tc.micro_batch_size} micro x {tc.seq_len} seq x "
            f"{env.world_size} ranks x {self.grad_accum} accum")
        say(f"device: {self.device} x {env.world_size}, autocast {self.dtype or 'off (fp32)'}, tf32 "
            f"{tc.tf32 and self.device.type == 'cuda'}, optimizer {cfg.optim.name}, fused AdamW {self.fused}, "
            f"compile {tc.compile}, "
            f"activation checkpointing {m.activation_checkpointing}, MFU peak "
            f"{'%.0f TFLOP/s' % (self.peak / 1e12) if self.peak else 'unknown (set train.peak_tflops)'}")
        if ckpt is None:
            start = f" from the weights of {self.cfg.train.init_from}" if self.cfg.train.init_from else ""
            say(f"fresh start{start} in {self.run_dir}")
        else:
            say(f"resumed from {ckpt} at step {self.step} (global sequence {self.loader.position})")
        for note in notes:
            say(f"  changed since the checkpoint: {note}")

    # -- one optimizer step -------------------------------------------------------------

    def _micro_inputs(self, batch: StepBatch, micro: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(inputs, targets, extra forward arguments) of one micro-batch. With a loss mask the
        targets the loss must skip (prompt tokens) are -1; attending within documents adds
        their segment and position ids."""
        rows = batch.tokens[micro]  # already on the device (train/prefetch.py)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        mask = batch.mask[micro] if batch.mask is not None else None
        if mask is not None:
            targets = targets.masked_fill(mask[:, 1:] == 0, -1)
        if not self.within_documents:
            return inputs, targets, {}
        segments, positions = document_layout(inputs, None if mask is None else mask[:, :-1])
        return inputs, targets, {"segment_ids": segments, "position_ids": positions}

    def _train_step(self, batch: StepBatch, lr: float) -> tuple[float, float, bool, bool]:
        """Returns (mean loss over all ranks, grad norm, skipped as non-finite, stop requested)."""
        env, model = self.env, self.train_model
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon + AdamW: one schedule, own peaks
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            inputs, targets, extra = self._micro_inputs(batch, micro)
            last = micro == self.grad_accum - 1
            # DDP all-reduces gradients during backward; only the last micro-step needs it.
            sync = model.no_sync() if env.distributed and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    _, loss = model(inputs, targets, **extra)
                loss = loss / self.grad_accum  # the step's loss is the mean over micro-batches
                if micro == 0 and fail_point("train.nan_loss", step=self.step + 1):
                    loss = loss * float("nan")
                loss_sum += loss.detach()
                loss.backward()
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # The step's one host-device sync (.tolist()); nothing before it waits on the device.
        # The norm rides along (every rank holds the same all-reduced gradients).
        flags = torch.stack([loss_sum.float(), (~torch.isfinite(norm)).float(),
                             torch.full((), float(self.flag.requested), device=self.device), norm.float()])
        loss_total, nonfinite, stop, norm_total = all_reduce_sum(flags, env).tolist()
        loss_mean = loss_total / env.world_size
        bad = nonfinite > 0 or not math.isfinite(loss_mean)
        if not bad:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_mean, norm_total / env.world_size, bad, stop > 0

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> int:
        try:
            return self._fit()
        finally:
            self.log.close()  # idempotent; also on an exception, so queued rows are written
            self.batches.close()

    def _fit(self) -> int:
        if self.step >= self.cfg.train.max_steps:
            self.log.print(f"already at step {self.step} >= train.max_steps = {self.cfg.train.max_steps}: "
                           "nothing to do")
            return self._exit(EXIT_OK, "finished")
        self.start()
        while self.step < self.cfg.train.max_steps:
            code = self.iteration()
            if code is not None:
                return code
        return self._exit(EXIT_OK, "finished")

    def start(self) -> None:
        """Before the first iteration: the step-0 evaluation of a fresh run, the step clock."""
        if self.step == 0 and self.evals.evaluate_due(0, self.cfg.train.max_steps):
            self._evaluate(0)
        self.bad_in_row = 0
        self.t_last = time.perf_counter()

    def iteration(self) -> int | None:
        """One optimizer step and what is due after it (log, eval, samples, checkpoint).
        Returns an exit code when the run must end now, else None."""
        tc, env = self.cfg.train, self.env
        lr = lr_at(self.step, self.cfg.optim, tc.max_steps)
        batch = self.batches.next_step()
        loss, norm, bad, stop = self._train_step(batch, lr)
        self.step += 1
        self.tokens_seen += tc.total_batch_size
        now = time.perf_counter()
        dt, self.t_last = now - self.t_last, now  # the loop's period: loader + step + logging
        tok_per_s = tc.total_batch_size / dt
        if self.step % tc.log_every == 0 or bad or self.step == tc.max_steps:
            self.log.train({"step": self.step, "kind": "train", "loss": None if bad else loss, "lr": lr,
                            "grad_norm": finite_or_none(norm), "tokens": self.tokens_seen,
                            "dt_ms": 1000 * dt, "tok_per_s": tok_per_s,
                            "mfu": mfu(self.flops_per_token, tok_per_s, self.peak, env.world_size)})
        self.bad_in_row = self.bad_in_row + 1 if bad else 0
        if self.bad_in_row >= tc.max_bad_steps:
            return self._too_many_bad(self.bad_in_row)

        extra_start = time.perf_counter()  # evaluation and saving are not part of a step's time
        reached = tc.target_loss > 0 and not bad and loss <= tc.target_loss
        done = self.step >= tc.max_steps or reached
        if self.evals.evaluate_due(self.step, tc.max_steps):
            self._evaluate(self.step)
        if env.is_main and self.evals.sample_due(self.step, tc.max_steps):
            for row in self.evals.samples(self.model, self.step):
                self.log.row(row)
        if self.step % tc.checkpoint_every == 0 or done or stop:
            self._save()
        fail_point("train.after_step", step=self.step)
        self.t_last += time.perf_counter() - extra_start
        if stop and not done:
            self.log.print(f"stopped by {self.flag.signal_name or 'a signal on another rank'} after step "
                           f"{self.step}; resume with the same command (--resume auto)")
            return self._exit(EXIT_PREEMPTED, "preempted")
        if reached:
            self.log.print(f"train loss {loss:.4f} <= train.target_loss = {tc.target_loss}: stopping")
            return self._exit(EXIT_OK, "target loss reached")
        return None

    def _evaluate(self, step: int) -> None:
        for row in self.evals.evaluate(self.model, step, self.tokens_seen):
            self.log.row(row)
            if row["kind"] == "val":
                self.log.print(f"step {step}: val loss {row['loss']:.4f}")
            elif row["kind"] == "hellaswag":
                self.log.print(f"step {step}: hellaswag acc_norm {row['acc_norm']:.4f} ({row['n']} examples)")

    def _save(self) -> None:
        """Rank 0 writes; every rank waits for it (a rank that exits early would make
        torchrun kill rank 0 mid-save), and a failed save fails every rank."""
        if self.saved_step == self.step:
            return
        self.log.flush()  # rows up to this step reach the disk before the checkpoint does
        rng = gather_to_main(capture_rng(self.device), self.env)
        error = None
        if self.env.is_main:
            state = {"step": self.step, "tokens_seen": self.tokens_seen,
                     "loader": self.loader.state_dict(), "rng": rng, "world_size": self.env.world_size,
                     "grad_accum": self.grad_accum, "config": self.cfg.to_dict(),
                     "time": time.time()}
            try:
                began = time.perf_counter()
                path = save_checkpoint(self.run_dir, self.step, {"model": self.model.state_dict(),
                                                                 "optimizer": self.optimizer.state_dict()}, state)
                took = time.perf_counter() - began
                prune_checkpoints(self.run_dir, self.cfg.train.keep_last, self.cfg.train.keep_every)
                size = sum(f.stat().st_size for f in path.iterdir())
                # (size and time: what train.dist_timeout_s must outlast on this filesystem)
                self.log.print(f"saved {path} ({size / 1e9:.2f} GB in {took:.1f} s)")
            except OSError as err:
                error = f"cannot write the checkpoint of step {self.step} in {self.run_dir}: {err}"
        if any_rank(error is not None, self.env):
            raise CheckpointError(error or "rank 0 failed to write the checkpoint")
        self.saved_step = self.step

    def _too_many_bad(self, count: int) -> int:
        last = latest_checkpoint(self.run_dir)
        if self.env.is_main:
            print(f"error: {count} non-finite steps in a row (steps {self.step - count + 1}..{self.step}, "
                  f"train.max_bad_steps = {self.cfg.train.max_bad_steps}): stopping without saving; last good "
                  f"checkpoint: {last or 'none'}. Lower optim.max_lr or inspect the data at this position.",
                  file=sys.stderr, flush=True)
        return self._exit(EXIT_NONFINITE, "non-finite loss")

    def _exit(self, code: int, reason: str) -> int:
        self.log.close()
        if self.env.is_main:
            write_exit(self.run_dir, code, reason, self.step)
        # Leave together: under torchrun, the first rank to exit non-zero makes the agent
        # signal the others, which must not catch rank 0 before it has written exit.json.
        barrier(self.env)
        return code
