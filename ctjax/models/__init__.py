"""Vision encoders in Flax NNX, every hidden state exposed.

Families: ViT, DeiT, DINOv2 (with registers), CLIP's vision tower, ResNet,
ConvNeXt, Swin, Inception-v3 (pytorch-fid's FID network).

from_pretrained(path_or_repo_id) -> Encoder   Hugging Face checkpoint, or
                                    pytorch-fid's Inception weights file
from_config(config, seed)        -> Encoder   random initialisation
Encoder.hidden_states(pixels)    -> [L+1, B, T, D] (ViT family, CLIP), or a
                                    tuple of L+1 channels-last arrays
forward(graphdef, params, pixels, dtype) -> EncoderOutput   (pure, jit-able)
jit_forward(cpu_options(config)) -> forward compiled as ctjax does (XLA:CPU
                                    options of its own on a CPU, XLA's
                                    defaults for Swin)
"""

from ctjax.models.config import (
  ConvNextConfig,
  EncoderConfig,
  InceptionConfig,
  ResNetConfig,
  SwinConfig,
  from_hf_config,
  preset,
)
from ctjax.models.convert import from_pretrained, load_state
from ctjax.models.encoder import (
  Encoder,
  cpu_options,
  forward,
  from_config,
  jit_forward,
)
from ctjax.models.vit import EncoderOutput, VisionTransformer

__all__ = [
  "ConvNextConfig",
  "Encoder",
  "EncoderConfig",
  "EncoderOutput",
  "InceptionConfig",
  "ResNetConfig",
  "SwinConfig",
  "VisionTransformer",
  "cpu_options",
  "forward",
  "from_config",
  "from_hf_config",
  "from_pretrained",
  "jit_forward",
  "load_state",
  "preset",
]
