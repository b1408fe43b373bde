"""Datasets: 2D toys with exact densities, the synthetic product catalogue, and a user's own image folder."""

from dalle2_edu.datasets.catalogue import (  # noqa: F401
    BACKGROUNDS,
    CATEGORIES,
    COLOURS,
    GENERATOR_VERSION,
    HELD_OUT_PAIRS,
    PATTERNS,
    ProductCatalogue,
    make_caption,
    parse_caption,
    render_product,
)
from dalle2_edu.datasets.folder import ImageCaptionFolder  # noqa: F401
from dalle2_edu.datasets.toys import GaussianMixture2D, make_moons, make_swiss_roll, toy_dataset  # noqa: F401
