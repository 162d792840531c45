"""The epochs of a run and the phase each belongs to.

    epochs [0, P)          phase 'pretrain'     flow maximum likelihood      (CoopFlow(Pre) step 1)
    epochs [P, P + W)      phase 'frozen_flow'  flow frozen, EBM trained     (CoopFlow(Pre) step 2)
    epochs [P + W, end)    phase 'coop'         Algorithm 1                  (all settings)

with P = ``n_pretrain`` = Train.pretrain_epochs (0 when Train.init_flow loads a pre-trained flow) and
W = ``n_frozen`` = Train.frozen_flow_epochs (+1 with Train.frozen_flow_off_by_one, the official scripts'
extra frozen epoch, taken from the cooperative epochs). `Train.mode: flow_only | langevin_only` runs the
two baselines instead (phase 'flow' / 'ebm').
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Phases"]


@dataclass(frozen=True)
class Phases:
    mode: str
    n_pretrain: int
    n_frozen: int
    total_epochs: int

    @classmethod
    def from_config(cls, train) -> "Phases":
        """The phases of a config's Train section."""
        coop = train.mode == "coopflow"
        n_pretrain = train.pretrain_epochs if coop and not train.init_flow else 0
        extra = 1 if train.frozen_flow_off_by_one and train.frozen_flow_epochs else 0
        n_frozen = train.frozen_flow_epochs + extra if coop else 0
        total = n_pretrain + (train.frozen_flow_epochs if coop else 0) + train.coop_epochs
        return cls(train.mode, n_pretrain, n_frozen, total)

    def of(self, epoch: int) -> str:
        """'pretrain' | 'frozen_flow' | 'coop' (CoopFlow), 'flow' (flow_only) or 'ebm' (langevin_only)."""
        if self.mode == "flow_only":
            return "flow"
        if self.mode == "langevin_only":
            return "ebm"
        if epoch < self.n_pretrain:
            return "pretrain"
        return "frozen_flow" if epoch < self.n_pretrain + self.n_frozen else "coop"
