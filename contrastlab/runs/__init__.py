"""Run safety: checkpoint cadence and two-phase commits, stop signals, a continuous record of
metrics across resumes, and opening a checkpoint (what a resume may change). Lightning glue lives in
:mod:`contrastlab.app.fit`; the plug-ins (``views/``, ``negatives/``) never import this."""
