"""What `edgekit deploy` hands back and writes: the report (``report.json``, ``report.md``) and the
systemd unit that runs the plan (``edgekit.service``)."""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class DeployReport:
    task: str
    task_sha256: str
    target_s: float
    percentile: int
    out_dir: str
    models: list[str]
    splits: dict[str, dict]  # name -> {range, size, used, ids}
    stages: dict[str, float] = field(default_factory=dict)  # seconds each stage took in this run
    resumed: list[str] = field(default_factory=list)  # stages taken over from an earlier, interrupted run
    restarted: list[str] = field(default_factory=list)  # stages started over, and why
    total_s: float = 0.0
    time_budget_s: float | None = None
    profile: dict = field(default_factory=dict)  # path, reused from, models measured now, why others were not
    tables: list[dict] = field(default_factory=list)  # path, model, problems, best row
    plan: dict = field(default_factory=dict)  # the chosen configuration, its predictions, why, competitors
    frontier: list[dict] = field(default_factory=list)
    offload: dict | None = None  # calibration: score, threshold, guarantee, curve points; None: local only
    verify: dict = field(default_factory=dict)  # measured vs predicted (deployment.verify.summarize)
    flags: list[str] = field(default_factory=list)  # predictions the verify measurement contradicts
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def benchmark_row(self) -> dict:
        """The shape benchmarks/deploy_time.py records."""
        v = self.verify
        return {
            "task": self.task,
            "target_s": self.target_s,
            "acc": v.get("acc"),
            "acc_pred": v.get("acc_pred"),
            "acc_pred_lo": v.get("acc_pred_lo"),
            "acc_pred_hi": v.get("acc_pred_hi"),
            "p50_s": v.get("p50_s"),
            "p50_pred_s": v.get("p50_pred_s"),
            "problems": v.get("problems"),
            "config": self.plan.get("config"),
        }

    def to_markdown(self) -> str:
        p, v = self.plan, self.verify
        L = [
            f"# edgekit deploy: {self.task}",
            "",
            f"Target: p{self.percentile} <= {self.target_s:g} s. Models: {', '.join(self.models)}. "
            f"Took {self.total_s:.0f} s" + (f" of a {self.time_budget_s:.0f} s budget." if self.time_budget_s else "."),
            "",
            "## Stages",
            "",
            "| stage | seconds |",
            "| --- | ---: |",
            *[f"| {k} | {s:.1f} |" for k, s in self.stages.items()],
            "",
            *[f"- resumed: {r}" for r in self.resumed],
            *[f"- started over: {r}" for r in self.restarted],
            "",
            "## Splits (disjoint; task sha256 " + self.task_sha256[:12] + "…)",
            "",
            "| split | range | used | first ids |",
            "| --- | --- | ---: | --- |",
            *[
                f"| {k} | {s['range']} | {s['used']} of {s['size']} | {', '.join(s['ids'][:5])}"
                + (" …" if len(s["ids"]) > 5 else "")
                + " |"
                for k, s in self.splits.items()
            ],
            "",
            "## Device profile",
            "",
            f"{self.profile.get('how', '')}",
            "",
            "## Chosen configuration",
            "",
            f"**{p.get('config')}**: table accuracy {p.get('accuracy', 0):.1%} "
            f"[{p.get('accuracy_lo', 0):.1%}, {p.get('accuracy_hi', 0):.1%}] on the tune split; predicted latency "
            f"{p.get('latency_s', 0):.2f} s [{p.get('latency_lo_s', 0):.2f}, {p.get('latency_hi_s', 0):.2f}] "
            f"({p.get('latency_method', '')}).",
            "",
            *[f"- {w}" for w in p.get("why", [])],
            "",
        ]
        if self.offload:
            o = self.offload
            L += [
                "## Offload",
                "",
                f"Score {o['score']} >= {o['threshold']:.4g} keeps the answer local; offload rate on the calibration "
                f"split {o.get('offload_rate') or 0:.1%} ({o['n_calibration']} problems). {o['guarantee']}",
                "",
            ]
        if v:
            L += [
                "## Verify (held out)",
                "",
                "| | measured | predicted | |",
                "| --- | --- | --- | --- |",
                f"| accuracy | {v['acc']:.1%} [{v['acc_lo']:.1%}, {v['acc_hi']:.1%}] | {v['acc_pred']:.1%} "
                f"[{v['acc_pred_lo']:.1%}, {v['acc_pred_hi']:.1%}] | "
                + ("**contradicted**" if v["acc_contradicted"] else "holds")
                + " |",
                f"| latency p50 | {v['p50_s']:.2f} s | {v['p50_pred_s']:.2f} s [{v['p50_pred_lo_s']:.2f}, "
                f"{v['p50_pred_hi_s']:.2f}] | " + ("**contradicted**" if v["p50_contradicted"] else "holds") + " |",
                f"| latency p95 | {v['p95_s']:.2f} s | <= {v['p95_pred_s']:.2f} s | "
                + ("**contradicted**" if v["p95_contradicted"] else "holds")
                + " |",
                "",
                f"{v['problems']} problems. Accuracy: {v['acc_pred_how']}. Latency: {v['latency_how']}.",
                "",
            ]
            if "offload" in v:
                o = v["offload"]
                L += [
                    f"Offload on verify: rate {o['rate']:.1%} (calibration: "
                    + (f"{o['rate_calibrated']:.1%}" if o["rate_calibrated"] is not None else "n/a")
                    + f"), end-to-end accuracy {o['system_acc']:.1%}, cloud errors {o['cloud_errors']}.",
                    "",
                ]
        if self.flags:
            L += ["## Flags", "", *[f"- {f}" for f in self.flags], ""]
        if self.notes:
            L += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        L += ["## Files", "", *[f"- {k}: `{path}`" for k, path in self.outputs.items()], ""]
        return "\n".join(L)


def edgekit_executable() -> str:
    """The `edgekit` next to this interpreter (a venv's bin/), else the one on PATH."""
    here = Path(sys.executable).parent / "edgekit"
    return str(here) if here.exists() else (shutil.which("edgekit") or "edgekit")


def unit_file(plan_path: Path, home: str | None, port: int = 8080, host: str = "127.0.0.1") -> str:
    """A systemd unit running ``edgekit serve --plan`` (restart on failure; exit 2 is a configuration error
    a restart cannot fix). examples/systemd/ has a hardened unit to start from for production."""
    cmd = [edgekit_executable(), "serve", "--plan", str(plan_path.resolve()), "--host", host, "--port", str(port)]
    env = f"Environment=EDGEKIT_HOME={home}\n" if home else ""
    return (
        "# written by `edgekit deploy`; install: sudo install -m 0644 edgekit.service /etc/systemd/system/ &&\n"
        "#   sudo systemctl daemon-reload && sudo systemctl enable --now edgekit\n"
        "[Unit]\n"
        "Description=edgekit serve: the deployed plan behind an OpenAI-compatible API\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"{env}"
        f"WorkingDirectory={plan_path.resolve().parent}\n"
        f"ExecStart={shlex.join(cmd)}\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=90\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "RestartPreventExitStatus=2\n"
        "Nice=10\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
