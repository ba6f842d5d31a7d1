"""LoRA DPO training: the run config (`config`, no torch), the trainer (`trainer`) and the warm-up proxy (`warmup`)."""

from dpo_engine.training.config import TrainConfig, load_subset

__all__ = ["TrainConfig", "load_subset"]
