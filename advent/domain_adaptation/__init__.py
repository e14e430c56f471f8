"""Domain adaptation stages: config, training, ESL pseudo-labels, evaluation."""
