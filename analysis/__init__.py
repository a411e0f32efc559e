"""Analysis of the study: the paper's Tables 1–7 and figures rebuilt from MLflow runs, beside the paper's numbers.

Entry points: ``python -m analysis.tables`` and ``python -m analysis.plots``; ``notebooks/results.ipynb`` shows both.
Only :mod:`analysis.schema` knows the harness' MLflow naming. Nothing here imports ``transformers``; ``mlflow`` is
imported lazily (it takes seconds), so ``import analysis.paper`` or ``analysis.stats`` stays cheap.
"""
