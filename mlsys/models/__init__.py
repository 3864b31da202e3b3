"""Model builders and their features, as plain ``nn.Sequential`` networks.

The MLflow packaging lives in ``mlsys.models.pyfunc`` and is not re-exported here, so that
building or training a model does not import MLflow.
"""

from mlsys.models.text import (
    PREDICT_CHUNK_ROWS,
    HashingFeaturizer,
    TextClassifierSpec,
    TextDataset,
    build_text_classifier,
    predict_texts,
)

__all__ = [
    "PREDICT_CHUNK_ROWS",
    "HashingFeaturizer",
    "TextClassifierSpec",
    "TextDataset",
    "build_text_classifier",
    "predict_texts",
]
