"""Run safety: checkpoint cadence and two-phase commits, stop signals, a continuous record of
metrics across resumes, option checks, and what a resume may change. Lightning glue lives in
:mod:`contrastlab.training`; the plug-ins (``views/``, ``negatives/``) never import this."""
