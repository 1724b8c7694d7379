"""The config's sections and the whole config (:class:`BFNConfig`): every knob of a bfn run, validated.

Unknown keys are rejected, assignments are validated, numbers are finite and true/false is not a
number; the root checks that its parts fit together (flow, output, network and data). Where the
values come from is :mod:`bfncli.config.layers`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError  # pydantic's own core, pinned by pydantic: its documented custom errors
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BFN_"
INT64_MAX = 2**63 - 1


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, numbers
    are finite, and true/false is not a number (pydantic alone would read ``batch_size: true`` as 1)."""

    # protected_namespaces: pydantic before 2.10 warns on every start about fields named model_* (model_channels)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _plain_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue  # unknown keys are refused with their own message
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(item, bool) for item in items) and not _accepts_bool(field.annotation):
                raise PydanticCustomError("number_not_bool", "{field}: expects a number or a word, not true/false",
                                          {"field": name})
            if any(type(item) is int and abs(item) > INT64_MAX for item in items):
                raise PydanticCustomError("int64", "{field}: is beyond the 64-bit integer range", {"field": name})
        return data


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits true/false (bool, Optional[bool], a Literal of booleans, ...)."""
    if annotation is bool:
        return True
    return any(arg is bool or isinstance(arg, bool) or _accepts_bool(arg) for arg in get_args(annotation))


# --------------------------------------------------------------------------------------- data
class DataConfig(Section):
    """Which data to train and evaluate on, and where its files live."""

    dataset: Literal["mnist", "cifar10", "text8", "digits", "pyhelp", "images", "text", "tensor"] = Field(
        "digits",
        description="mnist (dynamically binarized), cifar10, text8; embedded (no download): digits (8x8 "
        "handwritten digits), pyhelp (Python's help text); your own: images (a folder), text (a file), "
        "tensor (.safetensors/.npy)",
    )
    path: Optional[Path] = Field(None, description="your own data: an image folder, a text file or a tensor file")
    data_dir: Path = Field(Path("data"), description="where the paper's datasets are kept and downloaded to")
    download: bool = Field(True, description="download missing dataset files (False: fail instead)")
    mirrors: list[str] = Field([], description="base URLs tried before the canonical sources, e.g. a local server")
    num_bins: int = Field(256, ge=2, le=256, description="discretized images: number of bins per channel")
    horizontal_flip: bool = Field(False, description="images: random horizontal flips of training examples")
    seq_len: int = Field(256, ge=1, description="text: characters per example")
    val_frac: float = Field(0.01, gt=0, lt=1, description="images: fraction of the training set held out")
    class_names: list[str] = Field([], description="labelled data: the names of its classes (set from the data when "
                                   "a class-conditional model is trained, and kept in its checkpoints)")

    @field_validator("path", "data_dir")
    @classmethod
    def _home(cls, value: Optional[Path]) -> Optional[Path]:
        return value.expanduser() if value is not None else None  # '~/data' from YAML or BFN_* as in a shell


# ------------------------------------------------------------------------------------ network
class FourierImageAdapter(Section):
    """Image input adapter: Fourier features of the input, time as an extra channel."""

    kind: Literal["fourier_image"] = "fourier_image"
    input_channels: int = Field(3, ge=1)
    input_shape: tuple[int, int] = (32, 32)
    output_height: int = Field(3, ge=1, description="features per pixel (the network's input channels)")
    n_freq_bands: int = Field(64, ge=1)
    add_pos_feats: bool = Field(False, description="append Fourier position features")
    add_mask: bool = Field(False, description="append 2t-1 as an extra channel")


class TextAdapter(Section):
    """Text input adapter: a linear map of the class probabilities plus position and time."""

    kind: Literal["text"] = "text"
    vocab_size: int = Field(27, ge=2)
    seq_len: int = Field(256, ge=1)
    output_size: int = Field(768, ge=1)
    learn_pos_embedding: bool = False


class OutputAdapter(Section):
    """Maps the network's features to output-distribution parameters per data dimension."""

    input_height: int = Field(131, ge=1)
    output_channels: int = Field(3, ge=1)
    output_height: int = Field(2, ge=1, description="parameters per dimension (2 for discretized normal)")


class VDMUNet(Section):
    """The VDM U-Net (Kingma et al. 2021) used for CIFAR-10: no down-sampling, middle attention."""

    kind: Literal["unet_vdm"] = "unet_vdm"
    embedding_dim: int = Field(128, ge=1)
    n_blocks: int = Field(32, ge=1)
    n_attention_heads: int = Field(1, ge=1)
    dropout_prob: float = Field(0.1, ge=0, lt=1)
    norm_groups: int = Field(32, ge=1)
    input_channels: int = Field(3, ge=1)
    use_fourier_features: bool = True
    attention_everywhere: bool = False
    image_size: int = Field(32, ge=1)
    num_classes: int = Field(0, ge=0, description="classes to condition on (0: unconditional); 'no class' is learned too")
    input_adapter: FourierImageAdapter = FourierImageAdapter()
    output_adapter: OutputAdapter = OutputAdapter()

    @model_validator(mode="after")
    def _buildable(self):
        if self.embedding_dim % self.norm_groups or self.embedding_dim % self.n_attention_heads:
            raise ValueError(f"network.embedding_dim ({self.embedding_dim}) must be a multiple of norm_groups "
                             f"({self.norm_groups}) and of n_attention_heads ({self.n_attention_heads})")
        return self


class ImprovedUNet(Section):
    """The improved-diffusion U-Net (Nichol & Dhariwal 2021) used for binarized MNIST."""

    kind: Literal["unet_improved"] = "unet_improved"
    image_size: int = Field(28, ge=1)
    in_channels: int = Field(2, ge=1)
    model_channels: int = Field(128, ge=1)
    out_channels: int = Field(128, ge=1)
    num_res_blocks: int = Field(2, ge=1)
    attention_resolutions: list[int] = [8, 16]
    dropout: float = Field(0.5, ge=0, lt=1)
    channel_mult: list[int] = [1, 2, 2]
    conv_resample: Literal[True] = Field(True, description="learned up/down-sampling (the only kind supported)")
    dims: Literal[2] = 2
    num_heads: int = Field(4, ge=1)
    num_heads_upsample: int = -1
    project_input: bool = True
    skip: bool = True
    use_scale_shift_norm: bool = False
    use_checkpoint: bool = Field(False, description="gradient checkpointing: less memory, more compute")
    num_classes: int = Field(0, ge=0, description="classes to condition on (0: unconditional); 'no class' is learned too")
    input_adapter: FourierImageAdapter = FourierImageAdapter(
        input_channels=1, input_shape=(28, 28), output_height=2, add_mask=True
    )
    output_adapter: OutputAdapter = OutputAdapter(input_height=256, output_channels=1, output_height=1)

    @model_validator(mode="after")
    def _buildable(self):
        if self.model_channels % 32:
            raise ValueError(f"network.model_channels ({self.model_channels}) must be a multiple of 32 (GroupNorm)")
        if not self.channel_mult or self.channel_mult[0] != 1:
            raise ValueError("network.channel_mult must start with 1")
        if any(self.model_channels * m % self.num_heads for m in self.channel_mult):
            raise ValueError("network.num_heads must divide the channels of every level")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"network.image_size ({self.image_size}) must be divisible by "
                             f"2^(levels - 1) = {2 ** (len(self.channel_mult) - 1)}")
        return self


class Transformer(Section):
    """The GPT-style transformer (non-causal, with skip concatenation) used for text8."""

    kind: Literal["transformer"] = "transformer"
    vocab_size: int = Field(27, ge=2)
    n_layer: int = Field(24, ge=1)
    n_head: int = Field(12, ge=1)
    n_embd: int = Field(768, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    skip: bool = True
    bias: bool = True
    num_classes: int = Field(0, ge=0, description="classes to condition on (0: unconditional); 'no class' is learned too")
    input_adapter: TextAdapter = TextAdapter()

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


NetworkConfig = Annotated[Union[VDMUNet, ImprovedUNet, Transformer], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------- flow
class ContinuousFlow(Section):
    """Continuous and discretized data (paper sections 4 and 5)."""

    kind: Literal["continuous"] = "continuous"
    min_variance: float = Field(1e-6, gt=0, lt=1, description="sigma_1^2, the sender variance at t=1")
    kl_samples: int = Field(10, ge=1, description="Monte Carlo samples in the discretized discrete-time loss")


class DiscreteFlow(Section):
    """Discrete data (paper section 6)."""

    kind: Literal["discrete"] = "discrete"
    n_classes: int = Field(2, ge=2, description="K, the number of classes")
    max_sqrt_beta: float = Field(1.0, gt=0, description="sqrt(beta_1): beta(t) = beta_1 t^2")
    kl_samples: int = Field(10, ge=1, description="Monte Carlo samples in the discrete-time loss")
    discrete_time_kl: Literal["official", "exact"] = Field(
        "official",
        description="official: the receiver as a product of per-coordinate mixtures, as the released code "
        "and the paper's numbers; exact: the paper's mixture of K-dimensional Gaussians",
    )


FlowConfig = Annotated[Union[ContinuousFlow, DiscreteFlow], Field(discriminator="kind")]


# ------------------------------------------------------------------------------------- output
class OutputConfig(Section):
    """The output distribution p_O the network parameterises."""

    kind: Literal["bernoulli", "categorical", "discretized_normal", "delta"] = "discretized_normal"
    num_bins: Optional[int] = Field(
        None, ge=2, description="discretized_normal: bins; delta: bins of the reconstruction loss"
    )
    clip: bool = Field(True, description="discretized_normal: first/last bin take the tails")
    noise_pred: bool = Field(True, description="continuous flows: the network predicts the noise")
    recon_std: Optional[float] = Field(
        None, gt=0, description="delta: std of the discretized normal in the reconstruction loss (default sigma_1)"
    )


# -------------------------------------------------------------------------------- optimisation
class OptimConfig(Section):
    """AdamW."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.98)
    weight_decay: float = Field(0.01, ge=0)
    eps: float = Field(1e-8, gt=0)
    decay_groups: bool = Field(False, description="no weight decay on biases, norms and embeddings (transformer)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")


class TrainConfig(Section):
    """The training loop."""

    batch_size: int = Field(32, ge=1, description="examples per optimizer step, over all processes")
    steps: int = Field(1_000_000, ge=1, description="optimizer steps in the whole run")
    accumulate: int = Field(1, ge=1, description="gradient accumulation micro-steps per optimizer step")
    loss_steps: int = Field(0, ge=0, description="0: continuous-time loss; n: the n-step discrete-time loss")
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    grad_clip_norm: float = Field(5.0, gt=0)
    class_dropout: float = Field(
        0.1, ge=0, le=1,
        description="fraction of training examples whose label is replaced by 'no class' (classifier-free guidance)",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the loss (network and flow), CUDA graphs on a GPU: on, off, or auto (on for "
        "GPU runs of 500 steps or more; the first step compiles, about a minute)")
    seed: int = Field(666, ge=0, le=INT64_MAX, description="random seed: weights, data order, noise")
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(10_000, ge=1)
    keep_checkpoints: int = Field(2, ge=2, description="how many recent checkpoints to keep")
    val_every: int = Field(50_000, ge=1)
    val_repeats: int = Field(100, ge=1)
    val_batch_size: int = Field(1000, ge=1)
    max_val_batches: int = Field(-1, ge=-1, description="-1: the whole validation split")
    max_nonfinite_steps: int = Field(10, ge=1, description="stop after this many non-finite steps in a row")
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        [], description="experiment trackers through accelerate (opt-in), e.g. [tensorboard]"
    )


class EvalConfig(Section):
    """The official test.py estimator."""

    steps: int = Field(0, ge=0, description="0: continuous-time loss; n: the n-step discrete-time loss")
    repeats: int = Field(1, ge=1)
    batch_size: Optional[int] = Field(None, ge=1, description="examples per batch (default: 100 on the CPU, on a GPU as "
                                      "many as fit); the estimate does not depend on it")
    seed: int = Field(0, ge=0, le=INT64_MAX, description="random seed")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the loss: on, off, or auto (on for GPU evaluations of 500 network calls or "
        "more, and CPU evaluations of small networks estimated at 30 minutes or more eagerly)")


class SampleConfig(Section):
    """Sampling: which sampler, how many network evaluations, classes and guidance."""

    sampler: str = Field("auto", description="auto, paper, ode, ode3, sde, sde1 (bfn sample --help describes them)")
    steps: int = Field(100, ge=1, description="network evaluations (paper: its n updates, n + 1 evaluations)")
    eta: Optional[float] = Field(None, gt=0, lt=1, description="ode/sde: the time the solver starts at (default: "
                                 "1e-2 for continuous data, 1e-3 for discrete)")
    guidance: float = Field(1.0, ge=0, le=100, description="classifier-free guidance weight: 1 = the conditional "
                            "model, 0 = unconditional, > 1 sharper classes")
    batch_size: int = Field(16, ge=1, description="samples drawn per network batch")
    seed: int = Field(0, ge=0, le=INT64_MAX, description="random seed")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the network: on, off, or auto (on for GPU jobs of 500 network calls or more, "
        "and CPU jobs of small networks estimated at 30 minutes or more eagerly)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        from bfncli.samplers import NAMES

        if value not in NAMES:
            close = difflib.get_close_matches(value.lower(), NAMES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown sampler {value!r}{hint}; choose one of {', '.join(NAMES)}")
        return value


# ---------------------------------------------------------------------------------------- root
_FLOW_OUTPUTS = {"continuous": ("discretized_normal", "delta"), "discrete": ("bernoulli", "categorical")}
_DATASET_FLOW = {"mnist": "discrete", "text8": "discrete", "text": "discrete", "pyhelp": "discrete",
                 "cifar10": "continuous", "digits": "continuous", "images": "continuous"}


class BFNConfig(BaseSettings):
    """The whole, resolved configuration of a run."""

    # The environment as pydantic-settings reads it: BFN_TRAIN__BATCH_SIZE=64 is train.batch_size, in
    # any case. resolve_config turns the sources on (bfncli.config.layers); a config given whole is
    # validated as it is.
    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter="__", case_sensitive=False)

    description: str = Field("", description="what this configuration is, in a line")
    data: DataConfig = DataConfig()
    network: NetworkConfig = VDMUNet()
    flow: FlowConfig = ContinuousFlow()
    output: OutputConfig = OutputConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sample: SampleConfig = SampleConfig()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        from bfncli.config.layers import sources_of_this_resolution

        return sources_of_this_resolution(settings_cls, init_settings)

    @model_validator(mode="after")
    def _parts_fit_together(self):
        flow, out, net, data = self.flow, self.output, self.network, self.data
        if out.kind not in _FLOW_OUTPUTS[flow.kind]:
            raise ValueError(
                f"output.kind '{out.kind}' does not fit a {flow.kind} flow "
                f"(use one of: {', '.join(_FLOW_OUTPUTS[flow.kind])})"
            )
        if flow.kind == "discrete":
            want = "bernoulli" if flow.n_classes == 2 else "categorical"
            if out.kind != want:
                raise ValueError(f"output.kind must be '{want}' for flow.n_classes={flow.n_classes}")
        if out.kind == "discretized_normal" and out.num_bins is None:
            raise ValueError("output.num_bins is required for the discretized_normal output")
        expected_flow = _DATASET_FLOW.get(data.dataset)
        if expected_flow and flow.kind != expected_flow:
            raise ValueError(f"data.dataset '{data.dataset}' needs a {expected_flow} flow, not flow.kind '{flow.kind}'")
        if data.dataset == "mnist" and (flow.kind != "discrete" or flow.n_classes != 2):
            raise ValueError("data.dataset 'mnist' is binarized: it needs flow.n_classes=2")
        if data.dataset in ("text8", "text", "pyhelp") and (flow.kind != "discrete" or flow.n_classes != 27):
            raise ValueError(f"data.dataset '{data.dataset}' has 27 characters: it needs flow.n_classes=27")
        if out.kind in ("discretized_normal", "delta") and data.dataset in ("cifar10", "images", "digits"):
            # For a delta output the bins are those of its reconstruction loss: the data's own bins.
            if out.num_bins is not None and out.num_bins != data.num_bins:
                raise ValueError(f"output.num_bins ({out.num_bins}) must equal data.num_bins ({data.num_bins}); "
                                 f"change both, e.g. --set output.num_bins={data.num_bins}")
        if out.kind == "delta" and flow.kind == "continuous" and out.recon_std is not None:
            # The reconstruction loss measures what is left uncertain at t = 1, about sigma_1 (the
            # official code uses sigma_1, or 0.7 sigma_1 at 16 bins): a std far from it is a stale value.
            sigma_1 = flow.min_variance ** 0.5
            if not 0.5 <= out.recon_std / sigma_1 <= 2:
                raise ValueError(f"output.recon_std ({out.recon_std:.4g}) does not fit sigma_1 = "
                                 f"sqrt(flow.min_variance) = {sigma_1:.4g} (it must lie within 0.5-2 sigma_1); "
                                 "set output.recon_std=null to use sigma_1")
        if isinstance(net, Transformer):
            if flow.kind != "discrete" or net.vocab_size != flow.n_classes:
                raise ValueError("network.vocab_size must equal flow.n_classes")
            if net.input_adapter.vocab_size != net.vocab_size:
                raise ValueError("network.input_adapter.vocab_size must equal network.vocab_size")
            if net.input_adapter.output_size != net.n_embd:
                raise ValueError("network.input_adapter.output_size must equal network.n_embd")
            if data.dataset in ("text8", "text", "pyhelp") and net.input_adapter.seq_len != data.seq_len:
                raise ValueError(
                    f"network.input_adapter.seq_len ({net.input_adapter.seq_len}) must equal "
                    f"data.seq_len ({data.seq_len})"
                )
        else:
            _check_image_network(net)
            want_height = {"discretized_normal": 2, "delta": 1, "bernoulli": 1}.get(out.kind)
            if want_height is None:
                raise ValueError(f"output.kind '{out.kind}' needs the transformer network")
            if net.output_adapter.output_height != want_height:
                raise ValueError(
                    f"network.output_adapter.output_height must be {want_height} for the {out.kind} output"
                )
        return self

    # Convenience views used across the package.
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _check_image_network(net: Union[VDMUNet, ImprovedUNet]) -> None:
    """The adapters' sizes must fit the network's, or the first forward pass fails obscurely."""
    adapter, out = net.input_adapter, net.output_adapter
    channels = net.input_channels if isinstance(net, VDMUNet) else net.in_channels
    if adapter.output_height != channels:
        name = "input_channels" if isinstance(net, VDMUNet) else "in_channels"
        raise ValueError(f"network.input_adapter.output_height ({adapter.output_height}) must equal "
                         f"network.{name} ({channels})")
    if tuple(adapter.input_shape) != (net.image_size, net.image_size):
        raise ValueError(f"network.input_adapter.input_shape {list(adapter.input_shape)} must be "
                         f"[image_size, image_size] = [{net.image_size}, {net.image_size}]")
    if isinstance(net, VDMUNet):
        features = net.embedding_dim + net.input_channels
    else:
        features = net.out_channels + ((net.model_channels if net.project_input else net.in_channels) if net.skip else 0)
    if out.input_height != features:
        raise ValueError(f"network.output_adapter.input_height must be {features} for this network, "
                         f"not {out.input_height}")
    if out.output_channels != adapter.input_channels:
        raise ValueError(f"network.output_adapter.output_channels ({out.output_channels}) must equal "
                         f"network.input_adapter.input_channels ({adapter.input_channels})")


