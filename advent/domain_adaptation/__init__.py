"""Domain adaptation stages: training, ESL pseudo-labels, evaluation."""
