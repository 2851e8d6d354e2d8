"""What a profile sweep measures: its points (prompt lengths, context depths, parallel samples),
repetitions and settings, checked against the model's context before anything loads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgekit import engines
from edgekit.errors import UsageError

FILLER = (
    "The robot moved the red block onto the blue tray, then checked the camera feed, logged the "
    "joint angles and waited for the next instruction from the operator at the control station. "
)


@dataclass
class SweepConfig:
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    contexts: list[int] = field(default_factory=lambda: [0, 512, 2048, 4096])
    # every n up to 8: the step cost is a sawtooth in n on CPUs (perfmodel.model.ROW_CHUNK), and
    # accuracy tables use every k in 1..8
    ns: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
    decode_steps: int = 32
    reps: int = 5
    load_reps: int = 3
    idle_s: float = 3.0
    cooldown_s: float = 0.0
    threads: int | None = None
    n_ctx: int | None = None
    background: str | None = None  # --background: N busy workers or a command (edgekit.profile.background)
    gpu_layers: int | None = None  # llama.cpp: layers offloaded to the GPU (-1: all); None: the engine's default (0)
    engine: str = "llama.cpp"  # any registered engine that takes token prompts and has tokenize() (llama.cpp, onnx)

    @classmethod
    def quick(cls) -> SweepConfig:
        return cls(
            prompt_lengths=[32, 128, 512],
            contexts=[0, 1024],
            ns=[1, 2, 3, 4, 5, 6, 7, 8],
            decode_steps=16,
            reps=3,
            load_reps=2,
            idle_s=1.0,
        )

    def decode_points(self) -> list[tuple[int, int]]:
        """(context depth, n) of each decode point: depth over n=1, then n at a shallow context."""
        pts = [(max(c, 32), 1) for c in self.contexts] + [(32, n) for n in self.ns if n != 1]
        return list(dict.fromkeys(pts))

    def ctx_warning(self, model_ctx_train: int | None) -> str | None:
        """One line when the requested context exceeds what the model was trained for."""
        if self.n_ctx and model_ctx_train and self.n_ctx > model_ctx_train:
            return (
                f"--ctx {self.n_ctx} is above the {model_ctx_train} tokens this model was trained for; the KV "
                f"buffer and memory figures are sized for {self.n_ctx} and points deeper than {model_ctx_train} "
                f"time a context the model cannot use well (fix: pass --ctx {model_ctx_train} or less)"
            )
        return None

    def needed_ctx(self) -> int:
        return max(
            max(self.prompt_lengths) + 1,
            max(self.contexts or [0]) + 32 + self.decode_steps,
            32 + max(self.ns) * self.decode_steps,
        )

    def validate(self, model_ctx_train: int | None) -> int:
        from edgekit.schemas.checks import check_gpu_layers

        check_gpu_layers(self.gpu_layers, engines.canonical(self.engine))
        if self.n_ctx is not None and self.n_ctx < 1:
            raise UsageError(f"--ctx must be >= 1, got {self.n_ctx}", fix="pass --ctx 1 or more, or leave it out")
        if self.reps < 1 or self.decode_steps < 2:
            raise UsageError(
                "reps must be >= 1 and decode steps >= 2", fix="pass --reps 1 or more and --steps 2 or more"
            )
        if (
            any(x <= 0 for x in self.prompt_lengths)
            or any(x < 0 for x in self.contexts)
            or any(x <= 0 for x in self.ns)
        ):
            raise UsageError(
                "sweep values must be positive: --prompt-lengths and --ns > 0, --contexts >= 0",
                fix="e.g. --prompt-lengths 64,256 --contexts 0,512 --ns 1,2,4",
            )
        need = self.needed_ctx()
        limit = self.n_ctx or model_ctx_train
        if limit and need > limit:
            raise UsageError(
                f"the sweep needs {need} tokens of context but the {'--ctx' if self.n_ctx else 'model'} allows {limit}",
                fix="shorten --prompt-lengths/--contexts, lower --ns or --steps",
            )
        return max(need, self.n_ctx or 0)


Progress = Callable[[str, int, int], None]  # (stage, done, total)
