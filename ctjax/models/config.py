"""Encoder configuration: one frozen dataclass for the ViT family.

ViT (Dosovitskiy et al. 2021), DeiT (Touvron et al. 2021, distillation token)
and DINOv2 (Oquab et al. 2024; layer scale, SwiGLU for the giant size,
optional register tokens from Darcet et al. 2024) share one block structure.
The differences are fields here, read from a Hugging Face ``config.json``.
"""

import dataclasses
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# Mean/std the family's released checkpoints use when a folder carries no
# preprocessor_config.json: google/vit-* use 0.5/0.5; facebook/deit-* and
# facebook/dinov2-* use the ImageNet statistics.
FAMILY_MEAN_STD = {
  "vit": (HALF, HALF),
  "deit": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
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
    model_type: "vit", "deit", "dinov2" or "dinov2_with_registers".
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

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _square(value, name: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(
        f"config field {name}={value!r}: only square sizes are supported"
      )
    value = value[0]
  return int(value)


def from_hf_config(hf_config, image_mean=None, image_std=None) -> EncoderConfig:
  """Builds an EncoderConfig from a transformers config object (or its dict).

  Args:
    hf_config: a ``transformers.PretrainedConfig`` (ViTConfig, DeiTConfig,
      Dinov2Config, Dinov2WithRegistersConfig) or the dict of its config.json.
    image_mean: per-channel mean from preprocessor_config.json, if any.
    image_std: per-channel std from preprocessor_config.json, if any.
  """
  c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
  model_type = c.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(
      f"config.json model_type {model_type!r} is not supported; "
      f"expected one of {MODEL_TYPES}"
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
    layer_norm_eps=float(c.get("layer_norm_eps", 1e-6 if dino else 1e-12)),
    hidden_act=c.get("hidden_act", "gelu"),
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
