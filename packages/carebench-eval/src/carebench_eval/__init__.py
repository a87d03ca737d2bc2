"""Score any model's predictions: metrics, clustered bootstrap CIs, paired tests, fairness, robustness."""

__version__ = "0.1.0"
