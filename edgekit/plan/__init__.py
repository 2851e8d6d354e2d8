"""Planner: model x quantization x budget x n under a latency target (and energy / memory caps).

plan(profile, tables, latency_target_s, percentile=50, energy_cap_j=None, memory_cap_gb=None,
     model_map=None, *, profile_path=None, table_paths=None, model_infos=None,
     sequences_leave=False, extractor_kinds=None) -> PlanResult
to_plan_file(result) -> PlanFile;  PlanFile.save(path);  load_plan(path)
plot_pareto(result, path) -> Path  (the terminal table: edgekit.cli.render_plan.render_frontier)
"""

from edgekit.plan.export import to_plan_file
from edgekit.plan.pareto_plot import plot_pareto
from edgekit.plan.planner import InfeasibleTarget, PlanResult, extractor_for, plan
from edgekit.schemas.plan import PLAN_SCHEMA_VERSION, PlanFile, load_plan

__all__ = [
    "plan",
    "PlanResult",
    "InfeasibleTarget",
    "extractor_for",
    "plot_pareto",
    "PlanFile",
    "load_plan",
    "to_plan_file",
    "PLAN_SCHEMA_VERSION",
]
