"""The demo (advent/scripts/demo.py): its synthetic two-domain benchmark (synthetic.py, also
make_synthetic_data.py), the pipeline run on it (pipeline.py, configs.py, oracle_labels.py) and
what it reports (report.py, pictures.py)."""
