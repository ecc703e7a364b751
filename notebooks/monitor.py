# Databricks notebook source
# MAGIC %md
# MAGIC # deltaml: monitor
# MAGIC Compares the latest scored predictions (`monitor.window`) and the rows they were made from with
# MAGIC the model's training profile: PSI, KS, Wasserstein, chi-square and Jensen-Shannon per feature,
# MAGIC appended to the monitoring table and logged to MLflow with a drift report.

# COMMAND ----------

dbutils.widgets.text("conf", "../conf/telco_churn.yml", "Pipeline config")
dbutils.widgets.text("env", "databricks", "Environment overlay")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

from deltaml.widgets import run_from_widgets

outcome = run_from_widgets(dbutils.widgets, steps=["monitor"])
print(outcome.results["monitor"].summary)
