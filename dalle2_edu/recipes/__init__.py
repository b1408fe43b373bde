"""Recipes: every shipped checkpoint's settings in one place, and one runner (train → grade → save → report).

* :mod:`~dalle2_edu.recipes.settings`: ``RECIPES`` (full, fast, gpu, tiny) × stage → ``StageSettings``
* :mod:`~dalle2_edu.recipes.data`: ``TrainingSet``, the catalogue or your own folder
* :mod:`~dalle2_edu.recipes.stages`: per stage, how it trains and how it is graded
* :mod:`~dalle2_edu.recipes.runner`: ``Runner``, provenance, locking, reports; ``check_checkpoint_set``
"""

from dalle2_edu.recipes.data import TrainingSet
from dalle2_edu.recipes.runner import Runner, TrainingError, check_checkpoint_set
from dalle2_edu.recipes.settings import (
    PIPELINE_STAGES,
    RECIPES,
    STAGE_FILES,
    StageSettings,
    recipe_for,
    scale_steps,
)

__all__ = [
    "PIPELINE_STAGES", "RECIPES", "STAGE_FILES", "Runner", "StageSettings", "TrainingError", "TrainingSet",
    "check_checkpoint_set", "recipe_for", "scale_steps",
]  # fmt: skip
