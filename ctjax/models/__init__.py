"""ViT-family encoders (ViT, DeiT, DINOv2, DINOv2 with registers) in Flax NNX.

from_pretrained(path_or_repo_id) -> Encoder   Hugging Face checkpoint
from_config(config, seed)        -> Encoder   random initialisation
Encoder.hidden_states(pixels)    -> [L+1, B, T, D]
forward(graphdef, params, pixels, dtype) -> EncoderOutput   (pure, jit-able)
"""

from ctjax.models.config import EncoderConfig, from_hf_config, preset
from ctjax.models.convert import from_pretrained, load_state
from ctjax.models.encoder import Encoder, forward, from_config
from ctjax.models.vit import EncoderOutput, VisionTransformer

__all__ = [
  "Encoder",
  "EncoderConfig",
  "EncoderOutput",
  "VisionTransformer",
  "forward",
  "from_config",
  "from_hf_config",
  "from_pretrained",
  "load_state",
  "preset",
]
