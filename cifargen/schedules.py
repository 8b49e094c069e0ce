"""Per-epoch schedules: the KL weight (lambda) annealing and the step learning-rate decay."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass
class KLSchedule:
    """lambda per epoch, in three phases:

    1. 0 for the first ``warmup_epochs`` (a plain autoencoder learns to reconstruct);
    2. ``start`` (1e-4) until ``ramp_from`` of the run, while the learning rate decays and the
       reconstruction converges: this is where the headline (best) reconstruction comes from;
    3. rising from ``start`` to ``end`` (1.0, reached at the last epoch), geometrically (default)
       or linearly, so the final model is a proper VAE whose samples come from N(0, I).

    ``ramp_from=0`` ramps right after the warm-up (the assignment's schedule).
    """

    start: float = 1e-4
    end: float = 1.0
    shape: str = "geometric"
    warmup_epochs: int = 1
    ramp_from: float = 2 / 3

    def __post_init__(self):
        if self.shape not in ("geometric", "linear"):
            raise ConfigError(f"KL schedule shape must be 'geometric' or 'linear', got {self.shape!r}")
        if not 0 < self.start <= self.end:
            raise ConfigError(f"KL schedule needs 0 < start <= end, got start={self.start}, end={self.end}")
        if self.warmup_epochs < 0:
            raise ConfigError("KL schedule warmup_epochs must be >= 0")
        if not 0 <= self.ramp_from < 1:
            raise ConfigError(f"KL schedule ramp_from is a fraction of the run in [0, 1), got {self.ramp_from}")

    def weight(self, epoch: int, epochs: int) -> float:
        """lambda for 0-based ``epoch`` of a run of ``epochs`` epochs."""
        if epoch < self.warmup_epochs:
            return 0.0
        # The ramp's epochs are first_ramp .. epochs-1; the one before it is still at `start`.
        first_ramp = min(max(self.warmup_epochs + 1, round(self.ramp_from * epochs)), epochs - 1)
        if epoch < first_ramp or epochs - first_ramp < 1:
            return self.start
        t = (epoch - first_ramp + 1) / (epochs - first_ramp)
        if self.shape == "linear":
            return self.start + t * (self.end - self.start)
        return self.start * (self.end / self.start) ** t

    def weights(self, epochs: int) -> list[float]:
        return [self.weight(e, epochs) for e in range(epochs)]


def lr_milestones(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Epochs after which the learning rate drops, from fractions of the run (``(0.5,)``: after epoch 15 of 30)."""
    return sorted({max(1, round(f * epochs)) for f in fractions if round(f * epochs) < epochs})
