"""grain data pipelines: sources (synthetic shapes, image folders, image lists, TFDS array_record) and transforms."""

from titok_jax.data.image_list import ImageList
from titok_jax.data.pipeline import (
    DataIterator,
    default_data_config,
    make_eval_iterator,
    make_source,
    make_train_iterator,
    validate_data_config,
)
from titok_jax.data.sources import ImageFolder, tfds_source
from titok_jax.data.synthetic import SHAPE_KINDS, SyntheticShapes
from titok_jax.data.transforms import SKIPPED, decode_image

__all__ = [
    "SHAPE_KINDS",
    "SKIPPED",
    "DataIterator",
    "ImageFolder",
    "ImageList",
    "SyntheticShapes",
    "decode_image",
    "default_data_config",
    "make_eval_iterator",
    "make_source",
    "make_train_iterator",
    "tfds_source",
    "validate_data_config",
]
