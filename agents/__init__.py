"""agents: the learning side of textgym (language model, pretraining, RL algorithms)."""
