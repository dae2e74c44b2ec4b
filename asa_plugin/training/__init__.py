"""The Accelerate training pipeline behind ``advrobust train``."""
