"""Evaluation: lmms-eval models with GSWA (:mod:`gswa_plugin.eval.lmms`, registered through
lmms-eval's entry-point group ``lmms_eval.models``) and host loading shared with ``gswa
visualize`` and the inspection tools (:mod:`gswa_plugin.eval.hosts`).

Importing this package does not import lmms-eval; only :mod:`gswa_plugin.eval.lmms` does.
"""
