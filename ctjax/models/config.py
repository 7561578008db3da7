"""Encoder configurations: one frozen dataclass per architecture family.

ViT (Dosovitskiy et al. 2021), DeiT (Touvron et al. 2021, distillation token),
DINOv2 (Oquab et al. 2024; layer scale, SwiGLU for the giant size, optional
register tokens from Darcet et al. 2024) and CLIP's vision tower (Radford et
al. 2021; pre-LayerNorm, quick-GELU) share one block structure: the
differences are fields of ``EncoderConfig``. ResNet (He et al. 2016),
ConvNeXt (Liu et al. 2022) and Swin (Liu et al. 2021) have their own
dataclasses. All are read from a Hugging Face ``config.json`` by
``from_hf_config``.
"""

import dataclasses
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# OpenAI CLIP's preprocessing statistics (CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Mean/std the family's released checkpoints use when a folder carries no
# preprocessor_config.json: google/vit-* use 0.5/0.5; facebook/deit-* and
# facebook/dinov2-* use the ImageNet statistics.
FAMILY_MEAN_STD = {
  "vit": (HALF, HALF),
  "deit": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
  "clip_vision_model": (CLIP_MEAN, CLIP_STD),
}
MODEL_TYPES = tuple(FAMILY_MEAN_STD)
ACTIVATIONS = (
  "gelu",
  "gelu_new",
  "gelu_pytorch_tanh",
  "gelu_fast",
  "quick_gelu",
  "relu",
  "silu",
  "swish",
)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Sizes and options of a ViT-family encoder.

  Attributes:
    model_type: "vit", "deit", "dinov2", "dinov2_with_registers" or
      "clip_vision_model" (no patch bias, LayerNorm before the blocks, none
      after them).
    hidden_size: token width D.
    num_layers: number of transformer blocks L (the model has L+1 hidden states).
    num_heads: attention heads H.
    head_dim: per-head width K (usually D // H).
    mlp_dim: hidden width of the MLP (of each SwiGLU branch when ``swiglu``).
    patch_size: square patch side P in pixels.
    image_size: side S of the square training images; the position embedding
      holds (S // P)**2 patch positions.
    num_channels: input channels (3 for every released checkpoint).
    qkv_bias: whether query/key/value projections have biases.
    layer_norm_eps: epsilon of every LayerNorm.
    hidden_act: MLP activation (a Hugging Face ACT2FN name).
    layer_scale: DINOv2's per-channel scale on both residual branches.
    layerscale_value: initial value of the layer scale.
    swiglu: DINOv2-giant's SwiGLU MLP in place of fc1/act/fc2.
    num_registers: register tokens (DINOv2 with registers); 0 otherwise.
    image_mean: per-channel mean used by preprocessing.
    image_std: per-channel std used by preprocessing.
  """

  model_type: str = "vit"
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 3072
  patch_size: int = 16
  image_size: int = 224
  num_channels: int = 3
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  layer_scale: bool = False
  layerscale_value: float = 1.0
  swiglu: bool = False
  num_registers: int = 0
  image_mean: tuple[float, ...] = HALF
  image_std: tuple[float, ...] = HALF

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(
        f"model_type {self.model_type!r} is not one of {MODEL_TYPES}"
      )
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
        f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}"
      )
    if self.image_size % self.patch_size:
      raise ValueError(
        f"image_size {self.image_size} is not a multiple of "
        f"patch_size {self.patch_size}"
      )
    if (
      len(self.image_mean) != self.num_channels
      or len(self.image_std) != self.num_channels
    ):
      raise ValueError(
        f"image_mean/image_std need {self.num_channels} entries, got "
        f"{self.image_mean} / {self.image_std}"
      )

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches that carry a position embedding (CLS, DeiT's distillation)."""
    return 2 if self.model_type == "deit" else 1

  @property
  def grid_size(self) -> int:
    """Patches per side at the training resolution."""
    return self.image_size // self.patch_size

  def num_tokens(
    self, height: int | None = None, width: int | None = None
  ) -> int:
    """Sequence length T for images of the given size (default: ``image_size``)."""
    gh = (height or self.image_size) // self.patch_size
    gw = (width or self.image_size) // self.patch_size
    return self.num_prefix_tokens + self.num_registers + gh * gw

  @property
  def tag(self) -> str:
    """Family and sizes, the readable part of ``Encoder.identity``."""
    return (
      f"{self.model_type}-L{self.num_layers}-D{self.hidden_size}"
      f"-H{self.num_heads}-P{self.patch_size}-S{self.image_size}"
      f"-R{self.num_registers}"
    )

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _check_common(config):
  if config.hidden_act not in ACTIVATIONS:
    raise ValueError(
      f"hidden_act {config.hidden_act!r} is not one of {ACTIVATIONS}"
    )
  if len(config.depths) != len(config.hidden_sizes) or not config.depths:
    raise ValueError(
      f"depths {config.depths} and hidden_sizes {config.hidden_sizes} must "
      "be non-empty and of equal length"
    )
  if (
    len(config.image_mean) != config.num_channels
    or len(config.image_std) != config.num_channels
  ):
    raise ValueError(
      f"image_mean/image_std need {config.num_channels} entries, got "
      f"{config.image_mean} / {config.image_std}"
    )


class _Hierarchical:
  """Properties shared by the families whose stages differ in width.

  Their hidden states are a tuple of L+1 arrays (stem, then one per stage).
  """

  @property
  def num_layers(self) -> int:
    """Stages L; the model has L+1 hidden states (stem + stages)."""
    return len(self.depths)

  @property
  def hidden_size(self) -> int:
    """Width of the last hidden state."""
    return self.widths[-1]

  @property
  def num_prefix_tokens(self) -> int:
    return 0

  @property
  def num_registers(self) -> int:
    return 0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _join(xs) -> str:
  return "x".join(map(str, xs))


@dataclasses.dataclass(frozen=True)
class ResNetConfig(_Hierarchical):
  """transformers' ResNetModel (He et al. 2016).

  Attributes:
    model_type: "resnet".
    num_channels: input channels.
    embedding_size: stem width (7x7 stride-2 convolution, then 3x3 max pool).
    hidden_sizes: output width of each stage.
    depths: residual layers per stage.
    layer_type: "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1; the inner
      width is a quarter of the stage width).
    hidden_act: activation after the stem and after each residual sum (the
      convolutions inside a layer always use ReLU, as transformers).
    downsample_in_first_stage: the first stage halves the map (stride 2).
    downsample_in_bottleneck: a bottleneck strides in its first 1x1
      convolution instead of its 3x3 one.
    batch_norm_eps: epsilon of every BatchNorm (inference: running statistics).
    image_size: side S of the square input images (preprocessing only).
    image_mean: per-channel mean used by preprocessing.
    image_std: per-channel std used by preprocessing.
  """

  model_type: str = "resnet"
  num_channels: int = 3
  embedding_size: int = 64
  hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
  depths: tuple[int, ...] = (3, 4, 6, 3)
  layer_type: str = "bottleneck"
  hidden_act: str = "relu"
  downsample_in_first_stage: bool = False
  downsample_in_bottleneck: bool = False
  batch_norm_eps: float = 1e-5
  image_size: int = 224
  image_mean: tuple[float, ...] = IMAGENET_MEAN
  image_std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    if self.layer_type not in ("basic", "bottleneck"):
      raise ValueError(
        f"layer_type {self.layer_type!r} is not 'basic' or 'bottleneck'"
      )
    _check_common(self)

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels of each hidden state: stem, then each stage."""
    return (self.embedding_size,) + tuple(self.hidden_sizes)

  @property
  def tag(self) -> str:
    return (
      f"resnet-{self.layer_type}-E{self.embedding_size}"
      f"-W{_join(self.hidden_sizes)}-N{_join(self.depths)}"
      f"-F{int(self.downsample_in_first_stage)}"
      f"{int(self.downsample_in_bottleneck)}-S{self.image_size}"
    )


@dataclasses.dataclass(frozen=True)
class ConvNextConfig(_Hierarchical):
  """transformers' ConvNextModel (Liu et al. 2022).

  Attributes:
    model_type: "convnext".
    num_channels: input channels.
    patch_size: side of the non-overlapping stem patches (stride too).
    hidden_sizes: width of each stage.
    depths: blocks per stage.
    hidden_act: activation between the two pointwise layers.
    layer_scale_init_value: initial per-channel layer scale; 0 = none.
    layer_norm_eps: epsilon of every LayerNorm inside the model (1e-6 in
      transformers, whatever config.json says: its ``layer_norm_eps`` only
      sets the pooler's norm, which is not part of the hidden states).
    image_size: side S of the square input images (preprocessing only).
    image_mean: per-channel mean used by preprocessing.
    image_std: per-channel std used by preprocessing.
  """

  model_type: str = "convnext"
  num_channels: int = 3
  patch_size: int = 4
  hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
  depths: tuple[int, ...] = (3, 3, 9, 3)
  hidden_act: str = "gelu"
  layer_scale_init_value: float = 1e-6
  layer_norm_eps: float = 1e-6
  image_size: int = 224
  image_mean: tuple[float, ...] = IMAGENET_MEAN
  image_std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    _check_common(self)

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels of each hidden state: stem, then each stage."""
    return (self.hidden_sizes[0],) + tuple(self.hidden_sizes)

  @property
  def layerscale_value(self) -> float:
    return self.layer_scale_init_value

  @property
  def tag(self) -> str:
    return (
      f"convnext-P{self.patch_size}-W{_join(self.hidden_sizes)}"
      f"-N{_join(self.depths)}-LS{self.layer_scale_init_value:g}"
      f"-S{self.image_size}"
    )


@dataclasses.dataclass(frozen=True)
class SwinConfig(_Hierarchical):
  """transformers' SwinModel (Liu et al. 2021).

  Attributes:
    model_type: "swin".
    num_channels: input channels.
    patch_size: side of the non-overlapping patches.
    embed_dim: width C of the patch embedding; stage i is C * 2**i wide.
    depths: blocks per stage (odd blocks use shifted windows).
    num_heads: attention heads per stage.
    window_size: side of the attention windows.
    mlp_ratio: MLP width / token width.
    qkv_bias: whether query/key/value projections have biases.
    hidden_act: MLP activation.
    use_absolute_embeddings: add a learned position embedding to the patches.
    layer_norm_eps: epsilon of the block and final LayerNorms (the patch
      embedding's and the patch merging's norms use torch's 1e-5).
    image_size: side S of the square training images.
    image_mean: per-channel mean used by preprocessing.
    image_std: per-channel std used by preprocessing.
  """

  model_type: str = "swin"
  num_channels: int = 3
  patch_size: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  hidden_act: str = "gelu"
  use_absolute_embeddings: bool = False
  layer_norm_eps: float = 1e-5
  image_size: int = 224
  image_mean: tuple[float, ...] = IMAGENET_MEAN
  image_std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    _check_common(self)
    if len(self.num_heads) != len(self.depths):
      raise ValueError(
        f"num_heads {self.num_heads} needs one entry per stage {self.depths}"
      )
    for i, (w, h) in enumerate(zip(self.hidden_sizes, self.num_heads)):
      if w % h:
        raise ValueError(f"stage {i}: width {w} is not a multiple of {h} heads")

  @property
  def hidden_sizes(self) -> tuple[int, ...]:
    """Width of each stage's blocks."""
    return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels of each hidden state: the patch embedding, then each stage
    after its patch merging (which doubles the width, except the last)."""
    n = len(self.depths)
    return (self.embed_dim,) + tuple(
      self.embed_dim * 2 ** min(i + 1, n - 1) for i in range(n)
    )

  @property
  def tag(self) -> str:
    return (
      f"swin-P{self.patch_size}-C{self.embed_dim}-N{_join(self.depths)}"
      f"-H{_join(self.num_heads)}-W{self.window_size}"
      f"-A{int(self.use_absolute_embeddings)}-S{self.image_size}"
    )


# Inception-v3's Mixed blocks in torchvision's names (Szegedy et al. 2016,
# Figure 5-7 and Table 1): 5b-5d (35x35 at 299 px), 6a (grid reduction),
# 6b-6e (17x17), 7a (grid reduction), 7b-7c (8x8); and their output widths.
INCEPTION_BLOCKS = (
  "Mixed_5b",
  "Mixed_5c",
  "Mixed_5d",
  "Mixed_6a",
  "Mixed_6b",
  "Mixed_6c",
  "Mixed_6d",
  "Mixed_6e",
  "Mixed_7a",
  "Mixed_7b",
  "Mixed_7c",
)
INCEPTION_WIDTHS = (
  192,
  256,
  288,
  288,
  768,
  768,
  768,
  768,
  768,
  1280,
  2048,
  2048,
)


@dataclasses.dataclass(frozen=True)
class InceptionConfig(_Hierarchical):
  """Inception-v3 as pytorch-fid's FID network (TF's 2015-12-05 graph).

  The architecture is fixed (torchvision's Inception3 layout); the options
  say which pooling the last block uses.

  Attributes:
    model_type: "inception_v3".
    num_channels: input channels (3).
    last_pool: pooling in the pool branch of the last block (Mixed_7c):
      "max" as pytorch-fid's FIDInceptionE_2 and the TF FID graph; "avg"
      (TF-style, padding excluded) as Keras' InceptionV3 and the
      Inception-v3 paper (the other blocks always average).
    batch_norm_eps: epsilon of every BatchNorm (0.001, as TF's graph).
    image_size: side of the resized inputs (299, pytorch-fid's resize).
    image_mean: (0.5, 0.5, 0.5): pytorch-fid's ``2 x - 1`` of [0, 1] pixels.
    image_std: (0.5, 0.5, 0.5).
  """

  model_type: str = "inception_v3"
  num_channels: int = 3
  last_pool: str = "max"
  batch_norm_eps: float = 1e-3
  image_size: int = 299
  image_mean: tuple[float, ...] = HALF
  image_std: tuple[float, ...] = HALF

  def __post_init__(self):
    if self.model_type != "inception_v3":
      raise ValueError(f"model_type {self.model_type!r} is not 'inception_v3'")
    if self.last_pool not in ("max", "avg"):
      raise ValueError(f"last_pool {self.last_pool!r} is not 'max' or 'avg'")
    if self.num_channels != 3:
      raise ValueError("Inception-v3 takes 3 input channels")

  @property
  def depths(self) -> tuple[int, ...]:
    """One Mixed block per hidden state after the stem."""
    return (1,) * len(INCEPTION_BLOCKS)

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels of each hidden state: the stem (192), then each Mixed block."""
    return INCEPTION_WIDTHS

  @property
  def layer_names(self) -> tuple[str, ...]:
    """ "stem", then "Mixed_5b" ... "Mixed_7c"."""
    return ("stem",) + INCEPTION_BLOCKS

  @property
  def tag(self) -> str:
    return f"inception_v3-{self.last_pool}pool-S{self.image_size}"


def _square(value, name: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(
        f"config field {name}={value!r}: only square sizes are supported"
      )
    value = value[0]
  return int(value)


HIERARCHICAL = {
  "resnet": ResNetConfig,
  "convnext": ConvNextConfig,
  "swin": SwinConfig,
}
SUPPORTED = MODEL_TYPES + ("clip",) + tuple(HIERARCHICAL)
AnyConfig = (
  EncoderConfig | ResNetConfig | ConvNextConfig | SwinConfig | InceptionConfig
)


def from_hf_config(hf_config, image_mean=None, image_std=None) -> AnyConfig:
  """Builds the ctjax config from a transformers config object (or its dict).

  Args:
    hf_config: a ``transformers.PretrainedConfig`` (ViTConfig, DeiTConfig,
      Dinov2Config, Dinov2WithRegistersConfig, CLIPVisionConfig, CLIPConfig
      -- its vision tower --, ResNetConfig, ConvNextConfig, SwinConfig) or
      the dict of its config.json.
    image_mean: per-channel mean from preprocessor_config.json, if any.
    image_std: per-channel std from preprocessor_config.json, if any.

  Returns:
    An EncoderConfig (ViT family and CLIP), ResNetConfig, ConvNextConfig or
    SwinConfig.
  """
  c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
  model_type = c.get("model_type")
  if model_type == "clip":
    if not isinstance(c.get("vision_config"), dict):
      raise ValueError("CLIP config.json has no vision_config")
    c = dict(c["vision_config"], model_type="clip_vision_model")
    model_type = "clip_vision_model"
  if model_type in HIERARCHICAL:
    return _hierarchical_from_hf(c, image_mean, image_std)
  if model_type not in MODEL_TYPES:
    raise ValueError(
      f"config.json model_type {model_type!r} is not supported; "
      f"expected one of {SUPPORTED}"
    )
  for field in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
    if field not in c:
      raise ValueError(f"config.json has no field {field!r}")
  d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
  dino = model_type.startswith("dinov2")
  swiglu = bool(c.get("use_swiglu_ffn", False)) if dino else False
  if dino:
    mlp_dim = int(d * c.get("mlp_ratio", 4))
    if swiglu:  # two thirds of the MLP width, rounded up to a multiple of 8.
      mlp_dim = (int(mlp_dim * 2 / 3) + 7) // 8 * 8
  else:
    mlp_dim = int(c.get("intermediate_size", 4 * d))
  clip = model_type == "clip_vision_model"
  default_mean, default_std = FAMILY_MEAN_STD[model_type]
  num_channels = int(c.get("num_channels", 3))
  if num_channels != 3:
    default_mean, default_std = (0.5,) * num_channels, (0.5,) * num_channels
  return EncoderConfig(
    model_type=model_type,
    hidden_size=d,
    num_layers=int(c["num_hidden_layers"]),
    num_heads=heads,
    head_dim=int(c.get("head_dim") or d // heads),
    mlp_dim=mlp_dim,
    patch_size=_square(c.get("patch_size", 16), "patch_size"),
    image_size=_square(c.get("image_size", 224), "image_size"),
    num_channels=num_channels,
    qkv_bias=bool(c.get("qkv_bias", True)),
    layer_norm_eps=float(
      c.get("layer_norm_eps", 1e-6 if dino else 1e-5 if clip else 1e-12)
    ),
    hidden_act=c.get("hidden_act", "quick_gelu" if clip else "gelu"),
    layer_scale=dino,
    layerscale_value=float(c.get("layerscale_value", 1.0)),
    swiglu=swiglu,
    num_registers=int(c.get("num_register_tokens", 0))
    if model_type == "dinov2_with_registers"
    else 0,
    image_mean=tuple(
      float(v) for v in (image_mean if image_mean is not None else default_mean)
    ),
    image_std=tuple(
      float(v) for v in (image_std if image_std is not None else default_std)
    ),
  )


def _mean_std(c: dict, image_mean, image_std):
  n = int(c.get("num_channels", 3))
  mean, std = IMAGENET_MEAN, IMAGENET_STD
  if n != 3:
    mean, std = (0.5,) * n, (0.5,) * n
  mean = image_mean if image_mean is not None else mean
  std = image_std if image_std is not None else std
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _hierarchical_from_hf(c: dict, image_mean, image_std):
  """ResNetConfig / ConvNextConfig / SwinConfig from a config.json dict."""
  model_type = c["model_type"]
  mean, std = _mean_std(c, image_mean, image_std)
  common = dict(
    num_channels=int(c.get("num_channels", 3)),
    image_size=_square(c.get("image_size", 224), "image_size"),
    image_mean=mean,
    image_std=std,
  )
  depths = tuple(int(v) for v in c["depths"])
  if model_type == "resnet":
    return ResNetConfig(
      embedding_size=int(c.get("embedding_size", 64)),
      hidden_sizes=tuple(int(v) for v in c["hidden_sizes"]),
      depths=depths,
      layer_type=c.get("layer_type", "bottleneck"),
      hidden_act=c.get("hidden_act", "relu"),
      downsample_in_first_stage=bool(c.get("downsample_in_first_stage", False)),
      downsample_in_bottleneck=bool(c.get("downsample_in_bottleneck", False)),
      **common,
    )
  if model_type == "convnext":
    stages = int(c.get("num_stages", len(depths)))
    return ConvNextConfig(
      patch_size=_square(c.get("patch_size", 4), "patch_size"),
      hidden_sizes=tuple(int(v) for v in c["hidden_sizes"])[:stages],
      depths=depths[:stages],
      hidden_act=c.get("hidden_act", "gelu"),
      layer_scale_init_value=float(c.get("layer_scale_init_value", 1e-6)),
      **common,
    )
  return SwinConfig(
    patch_size=_square(c.get("patch_size", 4), "patch_size"),
    embed_dim=int(c.get("embed_dim", 96)),
    depths=depths,
    num_heads=tuple(int(v) for v in c["num_heads"]),
    window_size=int(c.get("window_size", 7)),
    mlp_ratio=float(c.get("mlp_ratio", 4.0)),
    qkv_bias=bool(c.get("qkv_bias", True)),
    hidden_act=c.get("hidden_act", "gelu"),
    use_absolute_embeddings=bool(c.get("use_absolute_embeddings", False)),
    layer_norm_eps=float(c.get("layer_norm_eps", 1e-5)),
    **common,
  )


# Sizes of the released checkpoints. ViT-{Ti,S,B,L,H}: Dosovitskiy et al. 2021,
# Table 1 (Ti/S from Touvron et al. 2021, DeiT Table 1); DINOv2-g: Oquab et al.
# 2024, Table 17 (1536 wide, 40 blocks, 24 heads, SwiGLU).
_VARIANTS = {
  "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
  "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
  "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
  "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
  "H": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
  "g": dict(
    hidden_size=1536, num_layers=40, num_heads=24, mlp_dim=4096, swiglu=True
  ),
}


def preset(name: str, **overrides) -> EncoderConfig:
  """Decodes a short variant name such as "B/16", "L/16", "H/14" or "g/14".

  Keyword overrides set any other field (model_type, image_size, ...).
  """
  try:
    size, patch = name.split("/")
    sizes = dict(_VARIANTS[size])
  except (ValueError, KeyError):
    raise ValueError(
      f"unknown variant {name!r}; expected one of "
      f"{[k + '/16' for k in _VARIANTS]} (any patch size)"
    ) from None
  sizes["head_dim"] = sizes["hidden_size"] // sizes["num_heads"]
  sizes["patch_size"] = int(patch)
  model_type = overrides.get("model_type", "vit")
  if model_type.startswith("dinov2"):
    sizes.update(layer_scale=True, layer_norm_eps=1e-6)
  if model_type in FAMILY_MEAN_STD:
    sizes["image_mean"], sizes["image_std"] = FAMILY_MEAN_STD[model_type]
  sizes.update(overrides)
  return EncoderConfig(**sizes)
