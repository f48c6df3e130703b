"""Planar normalizing flows and their Monte-Carlo KL term (variational inference with flows).

A planar flow step (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015)
maps ``z -> z + u tanh(w . z + b)`` with log-determinant ``log |1 + (1 - tanh^2(w . z + b))
w . u|``. It is invertible only when ``w . u >= -1``; the paper's appendix enforces this by
using ``u_hat = u + (m(w . u) - w . u) w / |w|^2`` with ``m(x) = -1 + softplus(x)`` instead of
``u`` (``invertible=True`` here). A chain of K steps turns a diagonal Gaussian sample ``z_0``
into ``z_K``; :func:`flow_kl` is the single-sample estimate of ``KL(q_K || N(0, I))`` used in
the flow ELBO (van den Berg et al., "Sylvester Normalizing Flows", UAI 2018, whose code layout
``amor_u``/``amor_w``/``amor_b`` Bayes-PFL follows).

Two parameterisations of the flow parameters ``u, w`` ``[..., K, D]`` and ``b`` ``[..., K]``:

- :class:`AmortizedPlanarFlow`: computed per input by linear maps of a context vector
  (an image-conditioned distribution);
- :class:`FreePlanarFlow`: free parameters shared by every input (an input-agnostic one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: added inside the log of the Jacobian term (upstream sylvester-flows / Bayes-PFL ``flows.py``)
LOG_DET_EPS = 1e-5


def planar_step(z: Tensor, u: Tensor, w: Tensor, b: Tensor, invertible: bool = True
                ) -> tuple[Tensor, Tensor]:
    """One planar step: ``z`` ``[..., D]``, ``u`` and ``w`` broadcastable to it, ``b``
    broadcastable to ``z.shape[:-1]``. Returns the new ``z`` and ``log |det dz'/dz|`` [...]."""
    wu = (w * u).sum(-1, keepdim=True)
    if invertible:
        u = u + (F.softplus(wu) - 1.0 - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        wu = (w * u).sum(-1, keepdim=True)
    activation = torch.tanh((w * z).sum(-1, keepdim=True) + b.unsqueeze(-1))
    log_det = torch.log((1.0 + (1.0 - activation.pow(2)) * wu).abs() + LOG_DET_EPS)
    return z + u * activation, log_det.squeeze(-1)


def planar_flow(z: Tensor, u: Tensor, w: Tensor, b: Tensor, invertible: bool = True
                ) -> tuple[Tensor, Tensor]:
    """K planar steps: ``u`` and ``w`` ``[..., K, D]`` and ``b`` ``[..., K]`` (leading dims
    broadcastable to ``z.shape[:-1]``). Returns ``z_K`` and the summed log-determinant."""
    log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for k in range(u.shape[-2]):
        z, step = planar_step(z, u[..., k, :], w[..., k, :], b[..., k], invertible)
        log_det = log_det + step
    return z, log_det


def gaussian_log_density(z: Tensor, mean: Tensor | float, variance: Tensor | float) -> Tensor:
    """``sum_d log N(z_d; mean_d, variance_d)`` without the ``-D/2 log(2 pi)`` constant."""
    variance = torch.as_tensor(variance, dtype=z.dtype, device=z.device)
    return (-0.5 * (variance.log() + (z - mean).pow(2) / variance)).sum(-1)


def flow_kl(z0: Tensor, mean: Tensor, variance: Tensor, zk: Tensor, log_det: Tensor) -> Tensor:
    """Single-sample ``KL(q_K || N(0, I))`` averaged over the leading dims:
    ``log q_0(z_0) - log N(z_K; 0, I) - sum log|det|`` (constants cancel)."""
    terms = gaussian_log_density(z0, mean, variance) - gaussian_log_density(zk, 0.0, 1.0) - log_det
    return terms.mean()


class AmortizedPlanarFlow(nn.Module):
    """Planar-flow parameters computed from a context vector ``[B, C]`` by three linear maps:
    ``u, w`` ``[B, K, D]`` and ``b`` ``[B, K]`` (upstream ``amor_u``, ``amor_w``, ``amor_b``)."""

    def __init__(self, context_dim: int, dim: int, num_flows: int):
        super().__init__()
        self.dim, self.num_flows = dim, num_flows
        self.amortize_u = nn.Linear(context_dim, num_flows * dim)
        self.amortize_w = nn.Linear(context_dim, num_flows * dim)
        self.amortize_b = nn.Linear(context_dim, num_flows)

    def flow_parameters(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (*context.shape[:-1], self.num_flows, self.dim)
        return (self.amortize_u(context).reshape(shape), self.amortize_w(context).reshape(shape),
                self.amortize_b(context))


class FreePlanarFlow(nn.Module):
    """Planar-flow parameters shared by every input, ``u, w`` ``[K, D]`` and ``b`` ``[K]``,
    initialised N(0, 1) (upstream ``torch.randn``)."""

    def __init__(self, dim: int, num_flows: int):
        super().__init__()
        self.u = nn.Parameter(torch.randn(num_flows, dim))
        self.w = nn.Parameter(torch.randn(num_flows, dim))
        self.b = nn.Parameter(torch.randn(num_flows))

    def flow_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.u, self.w, self.b
