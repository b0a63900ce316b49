"""The Ray version inside the lmops images: the RayJob's ``rayVersion``.

KubeRay uses rayVersion to decide what it injects into the pods (probes, flags), so it must describe the image
the pods run, not the Ray of whichever pod renders the manifest. The images install Ray from requirements.lock
(components/Dockerfile), and tests/test_lock.py fails when this constant and the lock's ray pin disagree.
"""

RAY_VERSION = "2.60.0"
