"""dalle2_edu: DALL·E 2 (unCLIP) at toy scale, built step by step for learners.

The package is the source of truth; the notebooks in ``notebooks/`` derive each piece and check it against it.
"""

__version__ = "0.1.0"

from dalle2_edu.utils import fast_mode, get_device, set_seed  # noqa: E402,F401
