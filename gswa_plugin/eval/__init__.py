"""Evaluation: lmms-eval models with GSWA (:mod:`gswa_plugin.eval.lmms`, registered through
lmms-eval's entry-point group ``lmms_eval.models``), host loading shared with the inspection
tools (:mod:`gswa_plugin.eval.hosts`) and tiny local copies of task datasets
(:mod:`gswa_plugin.eval.local_data`).

Importing this package does not import lmms-eval; only :mod:`gswa_plugin.eval.lmms` does.
"""
