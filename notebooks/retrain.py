# Databricks notebook source
# MAGIC %md
# MAGIC # deltaml: retrain
# MAGIC Evaluates the retraining policy (`retrain.*`: drifted share, performance decay, new rows, model
# MAGIC age, cooldown). When a trigger fires it runs the pipeline and the champion/challenger gate decides;
# MAGIC `dry_run` = `true` only records what it would do.

# COMMAND ----------

dbutils.widgets.text("conf", "../conf/telco_churn.yml", "Pipeline config")
dbutils.widgets.text("env", "databricks", "Environment overlay")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")
dbutils.widgets.dropdown("dry_run", "false", ["false", "true"], "Dry run")

# COMMAND ----------

from deltaml.widgets import retrain_from_widgets

decision = retrain_from_widgets(dbutils.widgets)
print(decision.summary)
