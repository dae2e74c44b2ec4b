"""Continued masked-LM pre-training (``advrobust pretrain``) with any defence that supports it."""
