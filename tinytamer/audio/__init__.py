"""Audio frontends: waveforms in, the feature maps models are trained on out.

``mel`` holds the shared pieces (framing, periodic Hann, the HTK mel filterbank);
``vggish_frontend`` is VGGish's released log-mel frontend; ``mfcc`` is the MLPerf Tiny
keyword-spotting MFCC; ``frontends`` names them for the datasets.
"""

from tinytamer.audio.frontends import Frontend, get_frontend, list_frontends

__all__ = ["Frontend", "get_frontend", "list_frontends"]
