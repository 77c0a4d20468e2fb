"""LightningModule for LoRA SFT with the loss on target tokens only, logits computed only there.

A 262k-token vocabulary makes the full (batch, seq, vocab) logits tensor the biggest cost of a step in time
and memory; only the ~20% of positions that are supporter tokens need it. So the model body runs on the whole
sequence and `lm_head` only on the hidden states that predict a target token, a chunk at a time, with the
gradient taken in the same pass (no logits kept for backward).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from emplifai.core.errors import UserError
from emplifai.lm.prefix import softcap, softcap_slope
from emplifai.train.examples import IGNORE
from emplifai.train.flops import StepFlops


class NoTargetTokens(UserError):
    pass


def _parts(model: Any) -> tuple[Any, Any, Any]:
    """(decoder body, lm_head, config) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    return body, base.get_output_embeddings(), base.config


LOSS_CHUNK = 128  # target positions per lm_head chunk: 128 x 262k fp32 logits = 134 MB


def even_chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) bounds of the fewest pieces of at most `chunk` rows, of equal size (+-1): each piece
    streams the whole head weight, so 129 rows are 64 + 65, not 128 + a 1-row pass over 262k x 640."""
    pieces = max(1, -(-n // chunk))
    bounds = [round(k * n / pieces) for k in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (optionally soft-capped), one chunk of rows at a time.

    The forward pass also computes the gradients (softmax - one-hot, through the cap), so neither the
    (targets, vocab) logits nor a recompute is kept for backward: the same matmuls as full logits, with
    memory bounded by one chunk. Backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float | None,
                chunk: int, grad_enabled: bool) -> torch.Tensor:
        need_h, need_w = (grad_enabled and bool(x) for x in ctx.needs_input_grad[:2])
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i, j in even_chunks(hidden.size(0), chunk):
            h, t = hidden[i:j], targets[i:j]
            z = softcap((h @ weight.t()).float(), cap)
            slope = softcap_slope(z, cap) if cap and (need_h or need_w) else None  # before z turns into g
            lse = torch.logsumexp(z, dim=-1)
            total += (lse - z.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                g = z.sub_(lse[:, None]).exp_()  # softmax, in place
                g[torch.arange(len(t), device=g.device), t] -= 1.0
                if slope is not None:
                    g *= slope
                g = g.to(h.dtype)
                if need_h:
                    grad_h[i:j] = g @ weight.to(h.dtype)
                if need_w:
                    grad_w += (g.t() @ h).to(weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = [None if g is None else g * grad_out.to(g.dtype) for g in ctx.saved_tensors]
        return *grads, None, None, None, None


def target_loss(model: Any, batch: dict[str, torch.Tensor], chunk: int = LOSS_CHUNK) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the target tokens of the batch (positions whose NEXT token has a label other
    than -100), and their number. `lm_head` runs on those positions only, chunk by chunk."""
    targets = batch["labels"][:, 1:]
    sel = targets != IGNORE
    if not bool(sel.any()):
        raise NoTargetTokens("a training batch has no target tokens (every label is -100): the prompts fill "
                             "train.max_length; raise train.max_length or shorten the prompt template")
    body, head, config = _parts(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  use_cache=False).last_hidden_state[:, :-1][sel]
    targets = targets[sel]
    cap = getattr(config, "final_logit_softcapping", None)
    weight = getattr(head, "weight", None)
    if (type(head) is torch.nn.Linear and head.bias is None and type(weight) is torch.nn.Parameter
            and weight.shape[-1] == hidden.shape[-1]):
        total = ChunkedHeadLoss.apply(hidden, weight, targets, cap, chunk, torch.is_grad_enabled())
        return total / targets.numel(), int(targets.numel())
    # a LoRA-wrapped or biased head, or a sharded weight (FSDP/DeepSpeed gather it in the module call):
    # plain autograd over the target positions
    logits = softcap(head(hidden), cap)
    return F.cross_entropy(logits.float(), targets), int(targets.numel())


def enable_checkpointing(model: Any, policy: str, lora_r: int) -> None:
    """Gradient checkpointing per decoder layer (non-reentrant). `full`: keep each layer's input only and
    recompute its whole forward in backward (least memory; big models). `matmuls`: also keep the outputs of
    the frozen weights' matmuls (not LoRA's rank-r ones), so backward recomputes only norms, rotary,
    activations, dropout and attention: ~20% less step time for ~15% more peak memory at Gemma-270M scale
    on CPU (benchmarks/bench_sft.py)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    if policy not in ("full", "matmuls"):
        raise UserError(f"train.checkpoint_policy must be full or matmuls, got {policy!r}")
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if policy == "matmuls":
        matmuls = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

        def keep(ctx: Any, op: Any, *args: Any, **kw: Any) -> CheckpointPolicy:
            if op in matmuls and min(args[-2].shape[-1], args[-1].shape[-1]) > lora_r:  # addmm(bias, a, b)
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, keep)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "constant":
        return 1.0
    raise UserError(f"train.schedule must be cosine, linear or constant, got {schedule!r}")


class SFTModule(pl.LightningModule):
    """Checkpoints hold only the trainable (LoRA) weights: megabytes instead of the whole base model."""

    def __init__(self, model: Any, train_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.cfg = model, train_cfg
        self.strict_loading = False  # the frozen base weights are not in our checkpoints
        self.history: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self.train_tokens, self.train_seconds = 0, 0.0
        # model-FLOPs utilisation: useful FLOPs of the steps (emplifai.train.flops) over the matmul peak
        # that the stage measures before fitting (`peak_flops`, FLOP/s); padding = pad share of the batches
        self.flop_model, self.flops_reason = StepFlops.of(_parts(model)[2], train_cfg.get("lora", {}))
        self.peak_flops: float | None = None
        self.train_flops, self.real_tokens, self.batch_cells = 0.0, 0, 0
        self._t0, self._n, self._val = 0.0, 0, [0.0, 0]
        self._rng: dict[str, Any] | None = None  # a checkpoint's random state, put back at the next batch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, self._n = target_loss(self.model, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=self._n)
        self.history["train/loss"].append((self.global_step, float(loss.detach())))
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng is not None:  # resumed: the random state (LoRA dropout) the uninterrupted run has here
            set_rng_state(self._rng, epoch_start=batch_idx == 0)
            self._rng = None
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        dt = time.perf_counter() - self._t0
        self.train_tokens += self._n
        self.train_seconds += dt
        self.log("train/target_tokens_per_s", self._n / dt, on_step=True, on_epoch=False, prog_bar=True)
        mask = batch["attention_mask"]
        self.real_tokens, self.batch_cells = self.real_tokens + int(mask.sum()), self.batch_cells + mask.numel()
        if self.flop_model is not None:
            flops = self.flop_model(mask, self._n)
            self.train_flops += flops
            if self.peak_flops:
                self.log("train/mfu", flops / dt / self.peak_flops, on_step=True, on_epoch=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, n = target_loss(self.model, batch)
        self._val[0] += float(loss) * n
        self._val[1] += n

    def on_validation_epoch_end(self) -> None:
        total, n = self._val
        self._val = [0.0, 0]
        if self.trainer.world_size > 1:  # each process saw a share: the loss over all of them, on every rank
            both = self.trainer.strategy.reduce(torch.tensor([total, n], dtype=torch.float64, device=self.device),
                                                reduce_op="sum")
            total, n = float(both[0]), int(both[1])
        if n and not self.trainer.sanity_checking:
            val = total / n
            self.log("val/loss", val, prog_bar=True, sync_dist=True)  # equal on every rank: a no-op mean
            self.history["val/loss"].append((self.global_step, val))

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.cfg["lr"]), weight_decay=float(self.cfg["weight_decay"]))
        total = self.stepping_batches()
        warmup = int(round(float(self.cfg["warmup_ratio"]) * total))
        schedule = str(self.cfg["schedule"])
        lr_factor(0, total, warmup, schedule)  # fail on a bad schedule name now, not at step 1

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup, schedule)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def stepping_batches(self) -> int:
        """Optimizer steps of the fit (the schedule's length), counted as Lightning's estimated_stepping_batches
        counts them but from the datamodule: asking the Trainer builds the train loader before a checkpoint is
        restored, and Lightning then skips restoring the loader's place in its epoch (a mid-epoch resume would
        replay the epoch's first batches)."""
        t = self.trainer
        batches = getattr(t.datamodule, "n_train_batches", None)
        if batches is None:
            return max(1, int(t.estimated_stepping_batches))
        steps = math.ceil(batches(t.world_size) / t.accumulate_grad_batches) * max(int(t.max_epochs), 1)
        return max(1, min(steps, t.max_steps) if t.max_steps != -1 else steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["emplifai_history"] = self.history
        checkpoint["emplifai_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = checkpoint.get("emplifai_history", self.history)
        self._rng = checkpoint.get("emplifai_rng")


def rng_state() -> dict[str, Any]:
    """The random generators a training step draws from: torch's (LoRA dropout; CUDA's on a GPU) and Python's.
    Plain tensors and tuples, so Lightning's weights-only checkpoint loading reads them."""
    import random

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], epoch_start: bool = False) -> None:
    """Put back a checkpoint's random state. A checkpoint saved at an epoch's end predates the next epoch's
    DataLoader iterator, which draws its base seed from the torch generator: `epoch_start` makes that draw."""
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if epoch_start:
        torch.empty((), dtype=torch.int64).random_()
