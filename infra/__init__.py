"""The local stack (SeaweedFS S3, MLflow server, Prefect server, work pool and worker) and
the `mlsys` command line (cli/)."""
