"""Per-epoch schedules: the KL weight (lambda) annealing and the step learning-rate decay."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass
class KLSchedule:
    """lambda per epoch: 0 for the first ``warmup_epochs`` (a plain autoencoder), then ``start``,
    rising to ``end`` at the last epoch, geometrically (default) or linearly."""

    start: float = 1e-4
    end: float = 1.0
    shape: str = "geometric"
    warmup_epochs: int = 1

    def __post_init__(self):
        if self.shape not in ("geometric", "linear"):
            raise ConfigError(f"KL schedule shape must be 'geometric' or 'linear', got {self.shape!r}")
        if not 0 < self.start <= self.end:
            raise ConfigError(f"KL schedule needs 0 < start <= end, got start={self.start}, end={self.end}")
        if self.warmup_epochs < 0:
            raise ConfigError("KL schedule warmup_epochs must be >= 0")

    def weight(self, epoch: int, epochs: int) -> float:
        """lambda for 0-based ``epoch`` of a run of ``epochs`` epochs."""
        if epoch < self.warmup_epochs:
            return 0.0
        rising = epochs - self.warmup_epochs  # epochs that carry a KL term
        t = (epoch - self.warmup_epochs) / (rising - 1) if rising > 1 else 0.0
        if self.shape == "linear":
            return self.start + t * (self.end - self.start)
        return self.start * (self.end / self.start) ** t

    def weights(self, epochs: int) -> list[float]:
        return [self.weight(e, epochs) for e in range(epochs)]


def lr_milestones(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Epochs at which the learning rate drops, as fractions of the run (40/60 and 50/60 by default)."""
    return sorted({max(1, round(f * epochs)) for f in fractions if round(f * epochs) < epochs})
