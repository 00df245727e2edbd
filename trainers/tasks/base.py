"""What every task object provides. A task is everything that differs between, say, sentiment
classification and NER: the columns it reads, how rows become token ids, the model head, how an
evaluation round is counted and scored, what a probe keeps, and what the endpoint offers.

Code outside trainers/tasks/ looks a task up once (`get_task(name)`) and calls it; it never
switches on the task's name. A new task is one new subclass registered in `trainers/tasks/__init__.py`.

This module stays light (no torch at import): the spec's config imports the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import DataError, did_you_mean

if TYPE_CHECKING:
    import torch

    from ..config import DataSection

Mode = Literal["max", "min"]
IGNORE = -100  # label id the loss skips (sub-tokens after the first, prompt tokens, padding)
TRAIN_LOSS = "train_loss"  # reported by every task beside its eval_ metrics


class Task:
    name: ClassVar[str]
    auto_class: ClassVar[str]  # transformers AutoModelFor... class that adds the head
    peft_task_type: ClassVar[str]  # peft.TaskType member for LoRA
    has_labels: ClassVar[bool]  # a head over named labels (the spec's or the data's)
    metric_modes: ClassVar[dict[str, Mode]]  # evaluation metrics (reported as eval_<name>), better high or low
    default_metric: ClassVar[str]  # ranks checkpoints and trials unless the spec names another
    routes: ClassVar[tuple[str, ...]]  # HTTP routes a served model of this task offers
    example_request: ClassVar[tuple[str, str]]  # (route, JSON body) a person can paste into curl
    needs_fast_tokenizer: ClassVar[bool] = False  # serving maps tokens back to characters
    generative: ClassVar[bool] = False  # served by generate() (left padding, EOS ids, chat)
    held_out_baseline: ClassVar[bool] = False  # `zerotune run` scores held-out rows beside TF-IDF
    onnx_exportable: ClassVar[bool] = False  # `zerotune export --onnx` and serve.backend onnx (one logits output)

    # --- metric names (data, not a computation) ---------------------------------------------------

    def reported_metrics(self) -> list[str]:
        return [*(f"eval_{k}" for k in self.metric_modes), TRAIN_LOSS]

    def mode_of(self, metric: str) -> Mode:
        if metric == TRAIN_LOSS:
            return "min"
        return self.metric_modes.get(metric.removeprefix("eval_"), "max")

    def metric_problem(self, metric: str) -> str | None:
        """Why `metric` cannot rank this task's runs, or None when a round reports it."""
        known = self.reported_metrics()
        if metric in known:
            return None
        return (f"got {metric!r}, which a {self.name} run does not report.{did_you_mean(metric, known)} "
                f"Choose one of: {', '.join(known)}")

    # --- data -------------------------------------------------------------------------------------

    def columns(self, data: DataSection) -> list[str]:
        raise NotImplementedError

    def clean_row(self, row: dict[str, Any], data: DataSection, where: str) -> dict[str, Any]:
        """The task's columns of one row, normalised; errors name the row (`where`)."""
        clean = {}
        for c in self.columns(data):
            value = row[c]
            if value is None or (isinstance(value, float) and value != value):
                raise DataError(f"{where}: column {c!r} is empty")
            clean[c] = str(value)
        return clean

    def labels_in(self, row: dict[str, Any], data: DataSection) -> list[str]:
        """The label names a clean row uses (checked against the model's labels)."""
        return []

    def encode(self, rows: list[dict], tokenizer, data: DataSection, labels: list[str] | None) -> list[dict]:
        """Clean rows -> {input_ids, attention_mask, labels} (lists; collate pads them)."""
        raise NotImplementedError

    def ignored_labels(self, encoded: dict[str, Any]) -> Any:
        """Labels for a copy of `encoded` that counts for nothing (pads an evaluation shard)."""
        return [IGNORE] * len(encoded["input_ids"])

    # --- model ------------------------------------------------------------------------------------

    def head_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        """from_pretrained keyword arguments that size and name the task's head."""
        return {}

    def prepare_model(self, model) -> None:
        """Adjust a freshly loaded model before training (in place)."""

    # --- evaluation: per-rank counts that sum across ranks, then scores -------------------------

    def count_size(self, labels: list[str] | None) -> int:
        return 0

    def align(self, logits: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and gold labels position by position (causal LM predicts the next token)."""
        return logits, gold

    def count(self, logits: torch.Tensor, gold: torch.Tensor, labels: list[str] | None) -> torch.Tensor:
        """This batch's counts (float64, `count_size` long)."""
        import torch

        return torch.zeros(0, dtype=torch.float64)

    def scores(self, loss_sum: float, n: float, counts: torch.Tensor, labels: list[str] | None) -> dict[str, float]:
        """Metrics (names as in metric_modes, without loss) from the all-reduced counts."""
        return {}

    def probe_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The part of a probe's logits worth keeping in probe.json."""
        return logits
