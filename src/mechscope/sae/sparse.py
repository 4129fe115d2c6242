"""Training-time arithmetic for TopK dictionaries that touches only the k active latents.

A dense TopK step costs six [batch, d_in] x [d_in, d_sae] products (encoder and decoder, forward
and two backward each). Only the encoder's forward needs every latent, to choose the top k;
after that each row has k non-zero latents, so the decoder forward is a weighted sum of k
decoder rows (``embedding_bag``), and every gradient is a scatter over the k chosen (row,
latent) pairs. With k << d_sae that leaves one dense product per step instead of six.

Shapes: x [batch, d_in], W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out],
indices and values [batch, k].
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def scatter_rows(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_out: int) -> torch.Tensor:
    """[n_out, d] with out[i] = sum over (b, j) where indices[b, j] = i of weights[b, j] rows[b]:
    G^T rows for the [batch, n_out] matrix G holding ``weights`` [batch, k] at ``indices``
    [batch, k]. G^T is built as CSR after one sort of the indices (cheaper than coalescing COO),
    and the product runs without ever forming G densely."""
    batch, k = indices.shape
    flat = indices.reshape(-1)
    order = flat.argsort()
    counts = torch.bincount(flat, minlength=n_out)
    crow = torch.zeros(n_out + 1, dtype=torch.long, device=rows.device)
    crow[1:] = counts.cumsum(0)
    columns = torch.arange(batch, device=rows.device).repeat_interleave(k)[order]
    with warnings.catch_warnings():  # torch flags sparse CSR as beta on every construction
        warnings.simplefilter("ignore", UserWarning)
        transposed = torch.sparse_csr_tensor(crow, columns, weights.reshape(-1)[order].to(rows.dtype),
                                             (n_out, batch), check_invariants=False)
    return transposed @ rows


class _GatherPreActivations(torch.autograd.Function):
    """values[b, j] = (x @ W_enc + b_enc)[b, indices[b, j]], given the dense pre-activations
    already computed without autograd (for choosing the indices); the backward pass scatters
    into the k chosen columns only."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, pre_dense, indices):
        ctx.save_for_backward(x, W_enc, indices)
        return pre_dense.gather(1, indices)

    @staticmethod
    def backward(ctx, grad_values):
        x, W_enc, indices = ctx.saved_tensors
        grad_x = grad_W_enc = grad_b_enc = None
        flat_indices = indices.reshape(-1)
        if ctx.needs_input_grad[2]:
            grad_b_enc = torch.zeros(W_enc.shape[1], dtype=grad_values.dtype, device=grad_values.device)
            grad_b_enc.index_add_(0, flat_indices, grad_values.reshape(-1))
        if ctx.needs_input_grad[1]:
            grad_W_enc = scatter_rows(indices, grad_values, x, W_enc.shape[1]).T
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W_enc.T, per_sample_weights=grad_values, mode="sum")
        return grad_x, grad_W_enc, grad_b_enc, None, None


def top_k_sparse(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [batch, k] >= 0 with gradients, indices [batch, k], dense pre-activations
    [batch, d_sae] without gradients) of a TopK encoder applied to x [batch, d_in]."""
    with torch.no_grad():
        pre_dense = x @ W_enc + b_enc
        indices = pre_dense.topk(k, dim=-1).indices
    values = torch.relu(_GatherPreActivations.apply(x, W_enc, b_enc, pre_dense, indices))
    return values, indices, pre_dense


def gathered_pre_activations(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                             pre_dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[batch, n] pre-activations at ``indices`` [batch, n], differentiable in x, W_enc and
    b_enc, reusing ``pre_dense`` [batch, d_sae] (computed from the same tensors) for the values."""
    return _GatherPreActivations.apply(x, W_enc, b_enc, pre_dense, indices)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """[batch, d_out] = sum_j values[b, j] W_dec[indices[b, j]] (without b_dec)."""
    return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
