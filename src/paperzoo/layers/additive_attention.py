"""Soft additive attention and hard (sampled) attention, for seq2seq and captioning models.

* Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and Translate",
  arXiv:1409.0473 (ICLR 2015), Sec. 3.1 and App. A.1.2:

      e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)      alignment model, an MLP scoring query i against key j
      α_ij = exp(e_ij) / Σ_k exp(e_ik)             Eq. 6
      c_i  = Σ_j α_ij h_j                          Eq. 5

  U_a h_j does not depend on i, so it is computed once per source sequence (App. A.1.2):
  :meth:`AdditiveAttention.project_keys` returns it and ``forward(..., projected_keys=...)`` reuses it.
* Xu et al., "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention",
  arXiv:1502.03044 (ICML 2015), Sec. 4.1 ("stochastic hard attention"): instead of the expectation c = Σ α h,
  one location s ~ Multinoulli(α) is sampled and c = h_s. The sampling step has no gradient; two estimators
  are offered (``estimator=``):

  - ``"reinforce"`` (the paper's, Eq. 12): the score-function gradient of the variational bound,
        ∂L/∂W ≈ ∂log p(y|s̃)/∂W + λ_r (log p(y|s̃) − b) ∂log p(s̃|a)/∂W + λ_e ∂H[s̃]/∂W,
    with a moving-average baseline b ← 0.9 b + 0.1 log p(y|s̃). The first term is ordinary backprop
    through c = h_s̃; :meth:`HardAttention.reinforce_loss` returns a surrogate loss whose gradient is
    the other two terms, given the per-sequence log-likelihood once the decoder has computed it.
  - ``"gumbel"``: straight-through Gumbel-softmax (Jang et al., arXiv:1611.01144): the forward pass uses
    the one-hot argmax of (log α + Gumbel noise), the backward pass the gradient of the tempered softmax.
    Biased but low-variance, and needs no extra loss term.

Masks follow :mod:`paperzoo.layers.attention`: ``key_padding_mask`` (B, S) is True at padding keys to ignore.
A query whose keys are all masked gets all-zero weights and a zero context (instead of NaN).

Deviations: Bahdanau's U_a has no bias and neither has W_a; we give U_a a bias (``bias=True``, as most
implementations do) which the paper's b-free form recovers with ``bias=False``. Hard attention in eval mode
takes the most likely location (``eval_mode="argmax"``; ``"sample"`` and ``"expectation"`` are options); the
paper's trick of replacing the sample by its expectation for half the images (Sec. 4.1) is left to the caller
(use the soft context, which is returned too).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AdditiveAttention", "HardAttention", "HardAttentionOutput", "masked_softmax"]


def masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim where ``allowed`` is True; rows with nothing allowed give zeros, not NaN."""
    if allowed is None:
        return scores.softmax(-1)
    # A finite minimum keeps fully-masked rows finite; exp(min - max) is exactly 0 elsewhere.
    weights = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(-1)
    return weights * allowed  # zero for masked keys, and for rows that had no key at all


class AdditiveAttention(nn.Module):
    """Bahdanau attention: e = vᵀ tanh(W q + U k), α = softmax(e), c = Σ α v (module docstring).

    Args:
        query_dim: size of the query s_{i-1} (the decoder state).
        key_dim: size of the keys h_j (the encoder annotations).
        attn_dim: size of the alignment MLP's hidden layer (n' in App. A.1.2).
        bias: give U_a a bias (not in the paper; see the module docstring).
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.W_a = nn.Linear(query_dim, attn_dim, bias=False)
        self.U_a = nn.Linear(key_dim, attn_dim, bias=bias)
        self.v_a = nn.Linear(attn_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """U_a h_j for all j, (B, S, key_dim) -> (B, S, attn_dim); compute once per source (App. A.1.2)."""
        return self.U_a(keys)

    def scores(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """e_ij: query (B, L, Dq), projected keys (B, S, A) -> (B, L, S)."""
        # (B, L, 1, A) + (B, 1, S, A) -> tanh -> v_a -> (B, L, S, 1) -> (B, L, S)
        hidden = torch.tanh(self.W_a(query).unsqueeze(2) + projected_keys.unsqueeze(1))
        return self.v_a(hidden).squeeze(-1)

    def weights(self, query: Tensor, keys: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, projected_keys: Tensor | None = None) -> Tensor:
        """α: (B, L, Dq) queries -> (B, L, S) (or (B, Dq) -> (B, S)), each row summing to 1 over allowed keys."""
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query  # (B, Dq) -> (B, 1, Dq)
        B, L, S = q.shape[0], q.shape[1], keys.shape[1]
        if keys.dim() != 3 or keys.shape[0] != B:
            raise ValueError(f"keys must be (B, S, Dk) with B={B}, got {tuple(keys.shape)}")
        pk = self.project_keys(keys) if projected_keys is None else projected_keys
        allowed = _allowed(key_padding_mask, attn_mask, B, L, S, keys.device)
        alpha = masked_softmax(self.scores(q, pk), allowed)  # Eq. 6
        return alpha.squeeze(1) if single else alpha

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                projected_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Context and weights.

        Args:
            query: (B, Dq) one query per batch element, or (B, L, Dq).
            keys: (B, S, Dk) encoder annotations h_j.
            values: (B, S, Dv) what is averaged; defaults to ``keys`` (as in Bahdanau et al.).
            key_padding_mask: (B, S) bool, True at padding.
            attn_mask: (L, S) or (B, L, S) bool, True where a query may attend.
            projected_keys: U_a h from :meth:`project_keys`, to skip recomputing it at every decoder step.

        Returns:
            context (B, Dv) or (B, L, Dv) (Eq. 5) and weights α (B, S) or (B, L, S).
        """
        alpha = self.weights(query, keys, key_padding_mask, attn_mask, projected_keys)
        v = keys if values is None else values
        # (B, S) -> (B, 1, S) @ (B, S, Dv) -> (B, 1, Dv) -> (B, Dv)
        context = (alpha.unsqueeze(1) @ v).squeeze(1) if alpha.dim() == 2 else alpha @ v
        return context, alpha


def _allowed(key_padding_mask: Tensor | None, attn_mask: Tensor | None, B: int, L: int, S: int,
             device: torch.device) -> Tensor | None:
    """Combine both masks into one bool (B, L, S) mask, True = may attend."""
    allowed = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, S) or key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (B, S) = ({B}, {S}), got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        allowed = ~key_padding_mask[:, None, :]  # (B, 1, S)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool or attn_mask.shape[-2:] != (L, S) or attn_mask.dim() not in (2, 3):
            raise ValueError(f"attn_mask must be bool (L, S) or (B, L, S) with L={L}, S={S}, got "
                             f"{attn_mask.dtype} {tuple(attn_mask.shape)}")
        allowed = attn_mask if allowed is None else allowed & attn_mask
    return None if allowed is None else allowed.to(device).expand(B, L, S)


class HardAttentionOutput(NamedTuple):
    """What one hard-attention step returns (shapes for a (B, Dq) query; a (B, L, Dq) query adds L)."""

    context: Tensor  # (B, Dv) h at the chosen location (c = h_s̃)
    weights: Tensor  # (B, S) the attention distribution α
    sample: Tensor  # (B, S) one-hot s̃ (straight-through for "gumbel")
    log_prob: Tensor  # (B,) log α_s̃, the term the REINFORCE estimator differentiates
    entropy: Tensor  # (B,) H[α], for the paper's entropy bonus
    soft_context: Tensor  # (B, Dv) Σ α h, the deterministic alternative


class HardAttention(nn.Module):
    """Stochastic hard attention (Xu et al. 2015, Sec. 4.1) over an additive alignment model.

    Args:
        query_dim, key_dim, attn_dim, bias: as :class:`AdditiveAttention` (the f_att of the paper).
        estimator: ``"reinforce"`` (paper) or ``"gumbel"`` (straight-through Gumbel-softmax).
        tau: Gumbel-softmax temperature.
        baseline_decay: the moving average b ← decay·b + (1 - decay)·mean(reward); 0.9 in the paper.
        reinforce_weight, entropy_weight: λ_r and λ_e of Eq. 12.
        eval_mode: location in eval mode: ``"argmax"``, ``"sample"`` or ``"expectation"`` (soft context).
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, bias: bool = True,
                 estimator: str = "reinforce", tau: float = 1.0, baseline_decay: float = 0.9,
                 reinforce_weight: float = 1.0, entropy_weight: float = 0.0, eval_mode: str = "argmax") -> None:
        super().__init__()
        if estimator not in ("reinforce", "gumbel"):
            raise ValueError(f"estimator must be 'reinforce' or 'gumbel', got {estimator!r}")
        if eval_mode not in ("argmax", "sample", "expectation"):
            raise ValueError(f"eval_mode must be 'argmax', 'sample' or 'expectation', got {eval_mode!r}")
        self.align = AdditiveAttention(query_dim, key_dim, attn_dim, bias)
        self.estimator, self.tau, self.eval_mode = estimator, tau, eval_mode
        self.baseline_decay, self.reinforce_weight, self.entropy_weight = (
            baseline_decay, reinforce_weight, entropy_weight)
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                projected_keys: Tensor | None = None) -> HardAttentionOutput:
        """Sample one location per query (arguments as :meth:`AdditiveAttention.forward`); in training mode by the
        chosen estimator, in eval mode by ``eval_mode``. See :class:`HardAttentionOutput` for what comes back."""
        alpha = self.align.weights(query, keys, key_padding_mask, attn_mask, projected_keys)
        v = keys if values is None else values
        present = alpha > 0  # masked keys have α = 0 exactly
        empty = ~present.any(-1, keepdim=True)  # queries with every key masked
        log_alpha = torch.where(present, torch.log(alpha.clamp_min(torch.finfo(alpha.dtype).tiny)), 0.0)
        mode = "train" if self.training else self.eval_mode
        if mode == "train" and self.estimator == "gumbel":
            logits = log_alpha.masked_fill(~present & ~empty, float("-inf"))
            gumbel = -torch.empty_like(alpha).exponential_().log()  # -log(Exp(1)) ~ Gumbel(0, 1)
            soft = F.softmax((logits + gumbel) / self.tau, dim=-1)
            hard = F.one_hot(soft.argmax(-1), alpha.shape[-1]).to(alpha.dtype)
            sample = hard - soft.detach() + soft  # forward: one-hot; backward: d soft
        elif mode in ("train", "sample"):  # s̃ ~ Multinoulli(α); no gradient through the draw itself
            probs = torch.where(empty, 1.0, alpha.detach()).reshape(-1, alpha.shape[-1])  # (B*L, S)
            idx = torch.multinomial(probs, 1).view(alpha.shape[:-1])
            sample = F.one_hot(idx, alpha.shape[-1]).to(alpha.dtype)
        elif mode == "argmax":
            sample = F.one_hot(alpha.argmax(-1), alpha.shape[-1]).to(alpha.dtype)
        else:
            sample = alpha
        sample = sample * present  # a fully masked row has no location: zero context, as in soft attention
        log_prob = (sample.detach() * log_alpha).sum(-1)  # log α_s̃ (0 for a fully masked row)
        entropy = -(alpha * log_alpha).sum(-1)
        # (B, S) -> (B, 1, S) @ (B, S, Dv) -> (B, Dv); (B, L, S) @ (B, S, Dv) -> (B, L, Dv)
        def mix(w: Tensor) -> Tensor:
            return (w.unsqueeze(1) @ v).squeeze(1) if w.dim() == 2 else w @ v
        return HardAttentionOutput(mix(sample), alpha, sample, log_prob, entropy, mix(alpha))

    def reinforce_loss(self, log_prob: Tensor, log_likelihood: Tensor, entropy: Tensor | None = None) -> Tensor:
        """Surrogate loss for Eq. 12's sampling terms; add it to the task loss (−log p(y|s̃)) and backprop.

        Args:
            log_prob: (B,) Σ over decoding steps of ``HardAttentionOutput.log_prob`` (log p(s̃|a)).
            log_likelihood: (B,) log p(y|s̃, a) of each sequence, the reward; detached here.
            entropy: (B,) Σ of ``HardAttentionOutput.entropy`` for the λ_e bonus, or None.

        Its gradient is −λ_r (log p(y|s̃) − b) ∂log p(s̃|a) − λ_e ∂H, averaged over the batch; in training
        mode it also updates the moving-average baseline b with this batch's mean reward.
        """
        reward = log_likelihood.detach()
        if not bool(self.baseline_initialized):  # start the average at the first reward, not at 0
            self.baseline.copy_(reward.mean())
            self.baseline_initialized.fill_(True)
        advantage = reward - self.baseline
        loss = -self.reinforce_weight * (advantage * log_prob).mean()
        if entropy is not None and self.entropy_weight:
            loss = loss - self.entropy_weight * entropy.mean()
        if self.training:
            self.baseline.mul_(self.baseline_decay).add_((1 - self.baseline_decay) * reward.mean())
        return loss
