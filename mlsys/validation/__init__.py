"""Data validation: inferred, versioned schemas and drift/skew statistics."""

from mlsys.validation.drift import (
    FeatureDrift,
    compare,
    histograms,
    jensen_shannon,
    js_divergence,
    linf_distance,
    schema_drift_specs,
)
from mlsys.validation.profile import FeatureSchema, Schema, Violation, infer_schema

__all__ = [
    "FeatureDrift",
    "FeatureSchema",
    "Schema",
    "Violation",
    "compare",
    "histograms",
    "infer_schema",
    "jensen_shannon",
    "js_divergence",
    "linf_distance",
    "schema_drift_specs",
]
