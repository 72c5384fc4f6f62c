"""Prefect orchestration: thin flows and tasks over pipeline.stages."""
