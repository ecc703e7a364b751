"""Running steps as a pipeline: the runner, step caching, lineage manifests, reproduce, retraining."""
