"""lm_head + cross-entropy in chunks of tokens: the full (tokens x vocab) logits never exist.

The logits are the largest activation of a GPT-2 (124M at micro batch 64: 64 x 1024 x 50,304
in bf16 plus an fp32 copy for the loss, and as many again for their gradient in backward).
Here the tokens are cut into chunks of `rows` and each chunk's logits live only while that
chunk is processed. The gradients are computed in the same pass (the softmax is at hand: the
logits' gradient is softmax - onehot), so backward only scales them by the incoming gradient
and no matmul is recomputed: the arithmetic is exactly that of F.linear + F.cross_entropy.

The padded vocabulary rows (>= vocab_size) are never multiplied: only weight[:vocab_size], a
view, enters the matmuls, so the softmax is the real-vocab one without a masked copy, and
their gradient is zero. Targets of -1 are ignored and the loss is the mean over the others
(F.cross_entropy's ignore_index=-1; SFT's loss masks rely on it).

The chunk loop is one opaque operator (torch.library.custom_op) so torch.compile neither
unrolls it nor breaks its graph around it; the autograd.Function around it is traced as two
small graph pieces.
"""

from __future__ import annotations

import torch

# Bytes of fp32 logits per chunk. On CPU small chunks stay cheap (the matmul is still large
# enough to run at full speed) and keep peak RSS low; on a GPU each chunk is ~10 kernel
# launches, so chunks are large enough that the launches do not show.
CHUNK_BYTES = {"cuda": 1 << 30}
DEFAULT_CHUNK_BYTES = 32 << 20


def chunk_rows(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk for this vocabulary on this device (a multiple of 8, at least 8)."""
    budget = CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES)
    return max(8, budget // (4 * vocab_size) // 8 * 8)


def _chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
            vocab_size: int, rows: int, with_grad: bool,
            softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, d loss/d hidden, d loss/d weight); the gradients are empty when not with_grad.
    softcap > 0: the logits are softcap * tanh(logits / softcap) (model.logit_softcap)."""
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are decided by the caller
        w = weight[:vocab_size]
        valid = targets != -1
        count = valid.sum().clamp(min=1)  # no target at all (a loss mask over a prompt): loss 0, not 0/0
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if with_grad:
            grad_hidden = torch.empty_like(hidden)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            scale = valid.float() / count  # d mean / d per-token loss; 0 for ignored targets
        # One logits buffer for every chunk, results written in place (mm out=, addmm_): on CPU
        # a fresh 30-80 MB tensor per chunk costs its page faults, as much as the arithmetic.
        buf = torch.empty(min(rows, hidden.size(0)), vocab_size, dtype=torch.float32, device=hidden.device)
        fp32 = hidden.dtype == torch.float32 and w.dtype == torch.float32
        for start in range(0, hidden.size(0), rows):
            h = hidden[start:start + rows]
            t = targets[start:start + rows]
            ok = valid[start:start + rows]
            logits = buf[:h.size(0)]
            if fp32:
                torch.mm(h, w.t(), out=logits)
            else:
                logits.copy_(h @ w.t())
            if softcap > 0:
                logits.div_(softcap).tanh_()
                if with_grad:  # d capped / d raw = 1 - tanh^2, taken before logits is reused
                    capped_grad = 1 - logits.square()
                logits.mul_(softcap)
            safe_t = t.clamp(min=0)[:, None]
            picked = logits.gather(1, safe_t).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(top).exp_()  # in place: logits are not needed any more
            total = exp.sum(dim=1)
            loss_sum += torch.where(ok, top.squeeze(1) + total.log() - picked, 0.0).sum()
            if with_grad:
                # d loss_i / d logits_i = softmax - onehot(target), scaled by the mean's 1/count.
                probs = exp.div_(total[:, None])
                probs.scatter_add_(1, safe_t, torch.full_like(picked, -1.0)[:, None])
                probs.mul_(scale[start:start + rows, None])
                if softcap > 0:
                    probs.mul_(capped_grad)
                if fp32:
                    torch.mm(probs, w, out=grad_hidden[start:start + rows])
                    grad_w[:vocab_size].addmm_(probs.t(), h)
                else:
                    g = probs.to(h.dtype)
                    grad_hidden[start:start + rows] = g @ w
                    grad_w[:vocab_size] += (g.t() @ h).float()
        loss = loss_sum / count
        if not with_grad:
            return loss, hidden.new_empty(0), weight.new_empty(0)
        return loss, grad_hidden, grad_w.to(weight.dtype)


# The same function as one opaque operator for torch.compile. Eager code calls _chunks
# directly: the operator's first call imports torch._dynamo (seconds of start-up).
_chunks_op = torch.library.custom_op("gpt2_pipeline::linear_cross_entropy", _chunks, mutates_args=())


@_chunks_op.register_fake
def _(hidden, weight, targets, vocab_size, rows, with_grad, softcap=0.0):
    loss = hidden.new_empty((), dtype=torch.float32)
    if not with_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, rows, softcap):
        chunks = _chunks_op if torch.compiler.is_compiling() else _chunks
        loss, grad_hidden, grad_weight = chunks(hidden, weight, targets, vocab_size, rows, True, softcap)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype),
                None, None, None, None)


def _flat_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                 rows: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Tokens flattened to rows, the matmul inputs in the autocast dtype (as F.linear would
    run them), and the chunk size for this device when not given."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    return hidden, weight, targets.reshape(-1), rows if rows is not None else chunk_rows(vocab_size, hidden.device)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int, rows: int | None = None, softcap: float = 0.0) -> torch.Tensor:
    """Mean of F.cross_entropy(hidden @ weight[:vocab_size].T, targets, ignore_index=-1).

    hidden (..., C), targets (...) of the same leading shape, weight (V_padded, C).
    Under autocast the matmuls run in the autocast dtype (as F.linear would) and the
    softmax in fp32. softcap > 0 caps the logits first (cap * tanh(logits / cap), fp32).
    """
    hidden, weight, targets, rows = _flat_inputs(hidden, weight, targets, vocab_size, rows)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, rows, float(softcap))
    chunks = _chunks_op if torch.compiler.is_compiling() else _chunks
    return chunks(hidden, weight, targets, vocab_size, rows, False, float(softcap))[0]


@torch.no_grad()
def token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 vocab_size: int, rows: int | None = None, softcap: float = 0.0) -> torch.Tensor:
    """Per-token F.cross_entropy(hidden @ weight[:vocab_size].T, targets) in fp32, shaped like
    targets, 0 where a target is -1; chunked like linear_cross_entropy, no gradients.

    For evaluation: one pass through the output layer gives every sum wanted (validation
    needs the loss over all targets and over those with text, for bits-per-byte)."""
    shape, device = targets.shape, hidden.device.type
    hidden, weight, targets, rows = _flat_inputs(hidden, weight, targets, vocab_size, rows)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    with torch.autocast(device, enabled=False):
        w = weight[:vocab_size]
        buf = torch.empty(min(rows, hidden.size(0)), vocab_size, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            h, t = hidden[start:start + rows], targets[start:start + rows]
            logits = buf[:h.size(0)]
            if h.dtype == torch.float32 and w.dtype == torch.float32:
                torch.mm(h, w.t(), out=logits)
            else:
                logits.copy_(h @ w.t())
            if softcap > 0:
                logits.div_(softcap).tanh_().mul_(softcap)
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            top = logits.amax(dim=1)
            lse = top + logits.sub_(top[:, None]).exp_().sum(dim=1).log()
            out[start:start + rows] = torch.where(t != -1, lse - picked, 0.0)
    return out.view(shape)
