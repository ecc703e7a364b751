# Databricks notebook source
# MAGIC %md
# MAGIC # deltaml: train
# MAGIC Runs the whole pipeline (ingest, split, fit, evaluate, register, score) from the YAML config, then shows
# MAGIC the evaluation report, the leaderboard and a sample of predictions. Widgets become config overrides; all
# MAGIC logic lives in the `deltaml` package (install it as a cluster or job library).

# COMMAND ----------

dbutils.widgets.text("conf", "../conf/telco_churn.yml", "Pipeline config")
dbutils.widgets.text("env", "databricks", "Environment overlay")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

from deltaml.widgets import config_from_widgets, run_from_widgets, training_results

outcome = run_from_widgets(dbutils.widgets)
results = training_results(config_from_widgets(dbutils.widgets), outcome)
print(results.summary)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Evaluation report (test split)

# COMMAND ----------

if results.report_html:
    displayHTML(results.report_html)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Leaderboard (each family's best trial on the validation split)

# COMMAND ----------

if results.leaderboard is not None:
    display(results.leaderboard)

# COMMAND ----------

# MAGIC %md
# MAGIC ## A sample of the predictions table

# COMMAND ----------

if results.predictions is not None:
    display(results.predictions)

# COMMAND ----------

# Later tasks of a Databricks job read these with dbutils.jobs.taskValues.get(taskKey="train", key="model_version").
for key, value in results.task_values.items():
    dbutils.jobs.taskValues.set(key=key, value=value)
