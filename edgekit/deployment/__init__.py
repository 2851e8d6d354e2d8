"""`edgekit deploy`: from a labelled task to a calibrated plan checked on held-out problems
(profile -> tune -> plan -> calibrate -> verify -> outputs), under a time budget."""

from edgekit.deployment.pipeline import DeployOptions, deploy
from edgekit.deployment.report import DeployReport

__all__ = ["DeployOptions", "DeployReport", "deploy"]
