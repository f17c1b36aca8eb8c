"""The benchmark suite behind `geeps bench`: run.py orchestrates, train.py measures
training to a target, model_fit.py fits bench/scaling.py, plots.py and report.py write
bench/*.png and bench/RESULTS.md."""
