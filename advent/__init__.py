"""ESL and AdvEnt: unsupervised domain adaptation for semantic segmentation."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
