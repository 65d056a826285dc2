"""Training data: synthetic degradations and datasets. Imported by training and evaluation code
only; the inference path never needs it."""

from .degradations import (
    RECIPES,
    DegradationPass,
    FaceRecipe,
    Recipe,
    SRRecipe,
    degrade,
    derive_seed,
    get_recipe,
    recipe_scale,
)

__all__ = [
    "RECIPES", "DegradationPass", "FaceRecipe", "Recipe", "SRRecipe", "degrade", "derive_seed", "get_recipe",
    "recipe_scale",
]
