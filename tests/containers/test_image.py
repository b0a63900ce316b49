"""The built image: non-root, works with a read-only root file system, carries its labels, has what the
probes need; a second build with nothing changed is served from the build key."""

from __future__ import annotations

import json

from lmops.images.build import KEY_LABEL, build


def run(engine, image, *cmd):
    return engine.run("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "host", image, *cmd,
                      check=False, timeout=300)


def test_runs_as_uid_1000_with_a_read_only_root(engine, lmops_image):
    probe = ("import os, json, torch, ray, mlflow, kserve, kfp, lmops\n"
             "try:\n    open('/opt/lmops/probe', 'w'); ro = False\nexcept OSError:\n    ro = True\n"
             "open('/tmp/scratch', 'w').write('ok')\n"
             "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'home': os.environ['HOME'], 'ro': ro,"
             " 'torch': torch.__version__}))")
    proc = run(engine, lmops_image, "python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["uid"] == 1000 and got["gid"] == 1000 and got["home"] == "/tmp"
    assert got["ro"] is True  # the root is read-only, /tmp (a tmpfs here, an emptyDir on a cluster) is not
    assert got["torch"].startswith("2.13.0")


def test_labels_probes_and_init(engine, lmops_image):
    labels = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", lmops_image).stdout)
    for key in ("title", "source", "revision", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels[KEY_LABEL]
    # KubeRay < 1.6 injects wget exec probes; tini is the entrypoint (PID 1 reaps Ray's children)
    proc = run(engine, lmops_image, "sh", "-c", "command -v wget && command -v tini && lmops --help >/dev/null")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    user = engine.run("image", "inspect", "--format", "{{.Config.User}}", lmops_image).stdout.strip()
    assert user == "1000:1000"


def test_a_second_build_is_served_from_its_build_key(engine, lmops_image):
    again = build("cpu", engine=engine, log=lambda line: None)
    assert again.cached and again.ref == lmops_image
