# Databricks notebook source
# MAGIC %md
# MAGIC # deltaml: train
# MAGIC Runs the whole pipeline (ingest, split, fit, evaluate, register, score) from the YAML config.
# MAGIC Widgets become config overrides; all logic lives in the `deltaml` package (install it as a
# MAGIC cluster or job library).

# COMMAND ----------

dbutils.widgets.text("conf", "../conf/telco_churn.yml", "Pipeline config")
dbutils.widgets.text("env", "databricks", "Environment overlay")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

from deltaml.widgets import run_from_widgets

outcome = run_from_widgets(dbutils.widgets)
print(f"MLflow run {outcome.run_id}: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.seconds.items()))
