"""The pipeline's stages as plain functions, one file each: ingest (pipeline/ingest.py) -> train
-> calibrate (+ promote) -> score -> review import (an inspector's decisions back as labels). Each loads from the workdir and the registry, calls the library
and logs through pipeline/tracking.py; flows/ wraps them in Prefect tasks, and the benchmark and
GPU boxes call them directly."""

from pipeline.stages.calibrate import CalibrateOutcome, calibrate_stage
from pipeline.stages.review_import import review_stage
from pipeline.stages.score import (
                                   ScoreOutcome,
                                   ScoringPlan,
                                   ShardResult,
                                   finish_scoring,
                                   plan_scoring,
                                   score_shard,
                                   score_stage,
                                   scoring_lock,
)
from pipeline.stages.train import TrainOutcome, checkpoint_path, latest_trained_version, train_stage

__all__ = ["CalibrateOutcome", "ScoreOutcome", "ScoringPlan", "ShardResult", "TrainOutcome", "calibrate_stage",
           "checkpoint_path", "finish_scoring", "latest_trained_version", "plan_scoring", "review_stage", "score_shard", "score_stage",
           "scoring_lock", "train_stage"]
