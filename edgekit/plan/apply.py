"""Apply a plan file to a query (used by `edgekit run --plan` and, later, the daemon)."""

from __future__ import annotations

import dataclasses

from edgekit.plan.schema import load_plan


def apply_plan(path, opts):
    """Return (options with the plan's configuration, predicted latency s, method, template)."""
    from edgekit.evaluate.tasks import TEMPLATES, CODE_TEMPLATE

    p = load_plan(path)
    c = p.chosen
    kind = c.extractor or "number"
    template = None
    if kind == "code":
        template = CODE_TEMPLATE.replace("{prompt}", "{question}")
    elif c.prompt_template in TEMPLATES and kind in TEMPLATES[c.prompt_template]:
        template = TEMPLATES[c.prompt_template][kind].replace("{options}", "")
    aggregate = "majority" if c.aggregation in ("majority", "greedy") else "none"
    temperature = 0.0 if c.aggregation == "greedy" else c.temperature
    new = dataclasses.replace(opts, model=c.model_id, n=c.n, max_tokens=c.budget, temperature=temperature,
                              top_p=c.top_p, aggregate=aggregate, extractor=kind)
    return new, p.predicted.latency_s.value, p.predicted.method, template
