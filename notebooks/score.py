# Databricks notebook source
# MAGIC %md
# MAGIC # deltaml: batch scoring
# MAGIC Ingests what the source gained and validates it (skipped when nothing changed), then scores
# MAGIC what is new in the configured input table with the registered `@champion` model (or the version
# MAGIC pinned with `score.model_version=N`) and replaces its batches in the predictions table.

# COMMAND ----------

dbutils.widgets.text("conf", "../conf/telco_churn.yml", "Pipeline config")
dbutils.widgets.text("env", "databricks", "Environment overlay")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

from deltaml.widgets import score_from_widgets

outcome = score_from_widgets(dbutils.widgets)
print(outcome.results["score"].summary)
