"""How many replicas a model should have on one GPU type: Ray Serve's autoscaling rule.

A *group* is the replicas of one model on one placement label (``H100:2``, ``cpu``). The desired
size is ``ceil(ongoing requests / target_ongoing_requests)`` clipped to ``[min_replicas,
max_replicas]`` (Ray Serve's ``AutoscalingConfig``: ``min_replicas``, ``max_replicas``,
``target_ongoing_requests``; https://docs.ray.io/en/latest/serve/autoscaling-guide.html). The pool
starts a replica when a request finds its group below that size, and unloads a replica idle for
the idle timeout while its group stays at or above ``min_replicas`` — so a group with
``min_replicas`` 0 scales to zero.
"""

import math
from dataclasses import dataclass

from synthd.config import Settings, setting_default


@dataclass(frozen=True)
class AutoscalingConfig:
    """Replica bounds per (model, GPU type) and the load one replica should carry (defaults: the
    settings', ``synthd.config``).

    Attributes:
        min_replicas: replicas kept however idle (0: the group scales to zero).
        max_replicas: most replicas of a group (1: no scale-out, one replica per placement).
        target_ongoing_requests: requests in flight per replica before another is started.
    """

    min_replicas: int = setting_default("min_replicas")
    max_replicas: int = setting_default("max_replicas")
    target_ongoing_requests: int = setting_default("target_ongoing_requests")

    @classmethod
    def from_settings(cls, settings: Settings) -> "AutoscalingConfig":
        """The bounds of ``settings`` (``SYNTHD_MIN_REPLICAS``, ``SYNTHD_MAX_REPLICAS``,
        ``SYNTHD_TARGET_ONGOING_REQUESTS``)."""
        return cls(settings.min_replicas, settings.max_replicas, settings.target_ongoing_requests)

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas) or self.target_ongoing_requests < 1:
            raise ValueError(
                f"autoscaling needs 0 <= min_replicas <= max_replicas, max_replicas >= 1 and "
                f"target_ongoing_requests >= 1, not {self}"
            )

    def desired_replicas(self, ongoing: int) -> int:
        """Replicas a group carrying ``ongoing`` requests should have (at least 1 when ``ongoing`` > 0)."""
        wanted = math.ceil(ongoing / self.target_ongoing_requests)
        return max(self.min_replicas, min(self.max_replicas, wanted))
