"""Performance model: predicts latency, energy and peak memory of a configuration from a profile.

fit(model_profile, source=None) -> PerfModel        measured points (NNLS) or published closed form
fit_device(profile, source=None) -> DeviceModel     cross-model fit over >= 2 profiled models
DeviceModel.predict_model(model_info) -> PerfModel  unprofiled model, "estimated (cross-model ...)"
PerfModel.predict(prompt_tokens, budget, n=1, expected_steps=None, mean_tokens=None) -> Prediction
PerfModel.predict_arrays(...)                       vectorised over candidates (the planner uses it)
"""

from edgekit.perfmodel.cross_model import DeviceModel, fit_device, predict_model
from edgekit.perfmodel.fit import fit
from edgekit.perfmodel.model import PerfModel, Prediction

__all__ = ["fit", "fit_device", "predict_model", "DeviceModel", "PerfModel", "Prediction"]
