"""Independent reference models for the tests: the exact reverse process of Gaussian data.

For x_0 ~ N(0, s² I), x_t = √ᾱ x_0 + √(1-ᾱ) ε is Gaussian too, so E[x_0 | x_t] and Var[x_0 | x_t] have closed forms,
and so does the true reverse step q(x_{t-1} | x_t) = N(μ̃(E[x_0|x_t], x_t), β̃_t + c_1² Var[x_0|x_t]), c_1 the
posterior's x_0 coefficient. These are derived here from the formulas alone, not from the package's helpers.
"""

import torch


class GaussianOracle:
    """model(x_t, t) -> the optimal ε (and, for learned_range, the v giving the exact reverse variance).

    Reads only the schedule (betas) of ``gd``; for a respaced process pass the original betas and let t be original.
    """

    def __init__(self, betas: torch.Tensor, s: float, learned_range: bool):
        betas = betas.to(torch.float64)
        self.betas = betas
        self.abar = torch.cumprod(1 - betas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        self.s2 = s * s
        self.learned_range = learned_range
        self.calls = 0

    def _col(self, arr, t, x):
        return arr[t].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)

    def x0_mean(self, x, t):
        ab = self._col(self.abar, t, x)
        return ab.sqrt() * self.s2 / (ab * self.s2 + 1 - ab) * x

    def reverse_variance(self, x, t):
        """Var[x_{t-1} | x_t] of the true reverse process (x_{-1} = x_0)."""
        ab, ab_prev, b = self._col(self.abar, t, x), self._col(self.abar_prev, t, x), self._col(self.betas, t, x)
        var_x0 = self.s2 * (1 - ab) / (ab * self.s2 + 1 - ab)
        post_var = b * (1 - ab_prev) / (1 - ab)
        c1 = b * ab_prev.sqrt() / (1 - ab)
        return post_var + c1**2 * var_x0

    def __call__(self, x, t):
        self.calls += 1
        ab = self._col(self.abar, t, x)
        eps = (x - ab.sqrt() * self.x0_mean(x, t)) / (1 - ab).sqrt()
        if not self.learned_range:
            return eps
        b = self._col(self.betas, t, x)
        # log β̃_t, with β̃_0 = 0 replaced by β̃_1 (the clipping that learned_range interpolates from)
        post_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        log_small_table = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        log_small = self._col(log_small_table, t, x)
        v = 2 * (self.reverse_variance(x, t).log() - log_small) / (b.log() - log_small) - 1
        return torch.cat([eps, v.expand_as(x)], dim=1)
