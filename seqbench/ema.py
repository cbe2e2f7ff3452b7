"""The weights' exponential moving average (``--set ema=DECAY``): what validation, ``best.pt``, the
test and the measurements use while training goes on with the trained weights."""
from __future__ import annotations

import contextlib

import torch


class WeightEMA:
    """An exponential moving average of a model's floating-point parameters, updated after every
    optimiser step: shadow <- decay * shadow + (1 - decay) * weight (TF's ExponentialMovingAverage
    without num_updates, as the BiDAF reference's ``var_decay``). ``swapped`` puts the averages into
    the model for a while (validation, saving best.pt) and the trained weights back after."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            s = self.shadow.get(n)
            if s is not None:
                s.lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, keep_zeros: bool = False) -> None:
        """The averages into ``model``; ``keep_zeros``: every entry of any parameter that the trained
        weights hold at exactly zero stays zero (meant for a model that removes weights during
        training, ISS: a component its thresholding has removed is removed from the average too,
        which otherwise takes thousands of steps to decay below the threshold; our reading, the
        reference trains 10k steps). It does not ask which parameters the thresholding touches:
        an exact zero elsewhere (an embedding entry, say) is kept too, a change of one weight."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                zero = p == 0 if keep_zeros else None
                p.copy_(self.shadow[n])
                if zero is not None:
                    p.masked_fill_(zero, 0.0)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module, after=None, keep_zeros: bool = False):
        """The averages in ``model`` (``keep_zeros``: see ``copy_to``; then ``after()``: e.g. ISS
        thresholding, as the reference thresholds the loaded averages at test) inside the block;
        the trained weights after it."""
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model, keep_zeros)
        if after is not None:
            after()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in saved:
                        p.copy_(saved[n])
