"""Networks of AttnGAN (docs/DESIGN.md, "The model"), built from config sections passed in.

DAMSM encoders: `TextEncoder` (bi-directional LSTM/GRU: word features [B, D, L] and sentence
vector [B, D]) and the image encoders made by `build_image_encoder` (frozen Inception-v3 trunk
with trained heads, or a small CNN for CPU-sized configs: regions [B, D, h, w] and code [B, D]).
"""

from attngan.nn.image_encoder import InceptionEncoder, SmallImageEncoder, build_image_encoder
from attngan.nn.inception import InceptionTrunk, load_inception_weights
from attngan.nn.text_encoder import TextEncoder

__all__ = [
    "TextEncoder",
    "InceptionEncoder",
    "SmallImageEncoder",
    "build_image_encoder",
    "InceptionTrunk",
    "load_inception_weights",
]
