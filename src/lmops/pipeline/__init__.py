"""The Kubeflow pipeline's side of lmops: what the kfp components call (steps.py), the local servers of a
one-machine run (servers.py), and ``make run`` through kfp's local runner (local.py).

The components themselves (``components/``) and the pipeline wiring (``pipelines/``) live at the top of
the repository; they stay thin and call ``lmops.pipeline.steps``.
"""
