"""The DMM written as a straightforward eager PyTorch loop: the benchmark's baseline.

No seqvi machinery: one ``for t`` loop per mini-batch doing everything a
textbook implementation (and Pyro's DMM example, per step) does: the
combiner RNN step over x_t, q(z_t | z_{t-1}, h_t), a reparameterized sample,
the gated transition p(z_t | z_{t-1}), the emitter p(x_t | z_t), the
Bernoulli log-likelihood and the Gaussian KL, masked and summed. Random
mini-batches of whole sequences padded to the longest in the batch.

The mathematics is seqvi's DMM with the combiner (forward ReLU RNN, ST-L),
parameter for parameter: ``load_from_seqvi`` copies a seqvi (DMM, Combiner)
pair's weights so that both compute the same free energy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MIN_SCALE = 1e-4


class PlainDMM(nn.Module):
    def __init__(self, x_dim: int = 88, z_dim: int = 100, emission: int = 100, transition: int = 200,
                 rnn: int = 600):
        super().__init__()
        # p
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.gate_1, self.gate_2 = nn.Linear(z_dim, transition), nn.Linear(transition, z_dim)
        self.mean_1, self.mean_2 = nn.Linear(z_dim, transition), nn.Linear(transition, z_dim)
        self.z_to_loc, self.z_to_scale = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)
        self.emit_1, self.emit_2 = nn.Linear(z_dim, emission), nn.Linear(emission, emission)
        self.emit_out = nn.Linear(emission, x_dim)
        # q
        self.rnn = nn.RNNCell(x_dim, rnn, nonlinearity="relu")
        self.h_0 = nn.Parameter(torch.zeros(rnn))
        self.z_to_hidden = nn.Linear(z_dim, rnn)
        self.q_loc, self.q_scale = nn.Linear(rnn, z_dim), nn.Linear(rnn, z_dim)

    def free_energy(self, x: Tensor, mask: Tensor, kl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
        """x (B, T, D), mask (B, T) -> (sum of recon + kl_weight * kl over real steps, sum of recon + kl)."""
        batch, steps = mask.shape
        h = self.h_0.expand(batch, -1)
        z_prev = self.z_0.expand(batch, -1)
        loss = x.new_zeros(())
        total = x.new_zeros(())
        for t in range(steps):
            x_t = x[:, t]
            h = self.rnn(x_t, h)
            h_c = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h)
            q_loc, q_scale = self.q_loc(h_c), F.softplus(self.q_scale(h_c)) + MIN_SCALE
            z = q_loc + q_scale * torch.randn_like(q_loc)
            gate = torch.sigmoid(self.gate_2(torch.relu(self.gate_1(z_prev))))
            proposed = self.mean_2(torch.relu(self.mean_1(z_prev)))
            p_loc = (1 - gate) * self.z_to_loc(z_prev) + gate * proposed
            p_scale = F.softplus(self.z_to_scale(torch.relu(proposed))) + MIN_SCALE
            logits = self.emit_out(torch.relu(self.emit_2(torch.relu(self.emit_1(z)))))
            recon = F.binary_cross_entropy_with_logits(logits, x_t, reduction="none").sum(-1)
            ratio = (q_scale / p_scale) ** 2
            kl = 0.5 * (ratio + ((q_loc - p_loc) / p_scale) ** 2 - 1 - ratio.log()).sum(-1)
            loss = loss + ((recon + kl_weight * kl) * mask[:, t]).sum()
            total = total + ((recon + kl) * mask[:, t]).sum()
            z_prev = z
        return loss, total

    def load_from_seqvi(self, model: nn.Module, inference: nn.Module) -> "PlainDMM":
        """Copy the weights of a seqvi DMM and its Combiner (same sizes)."""
        tr, em = model.transition, model.emitter
        pairs = [(self.gate_1, tr.gate[0]), (self.gate_2, tr.gate[2]), (self.mean_1, tr.proposed_mean[0]),
                 (self.mean_2, tr.proposed_mean[2]), (self.z_to_loc, tr.z_to_loc), (self.z_to_scale, tr.z_to_scale),
                 (self.emit_1, em[0][0]), (self.emit_2, em[0][2]), (self.emit_out, em[1].logits),
                 (self.rnn, inference.rnn), (self.z_to_hidden, inference.z_to_hidden),
                 (self.q_loc, inference.loc), (self.q_scale, inference.scale)]
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.load_state_dict(theirs.state_dict())
            self.z_0.copy_(model.z_0)
            self.h_0.copy_(inference.h_0)
        return self


def train_epoch(model: PlainDMM, data: Tensor, lengths: Tensor, optimizer: torch.optim.Optimizer,
                batch_size: int = 20, kl_weight: float = 1.0, clip: float = 10.0) -> int:
    """One epoch of random mini-batches of whole sequences; returns the real time steps trained."""
    steps = 0
    perm = torch.randperm(len(lengths))
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        length = int(lengths[idx].max())
        x = data[idx, :length]
        mask = (torch.arange(length).unsqueeze(0) < lengths[idx].unsqueeze(1)).to(x.dtype)
        loss, _ = model.free_energy(x, mask, kl_weight)
        loss = loss / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        steps += int(mask.sum())
    return steps
