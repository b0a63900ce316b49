"""`lmops cluster`: a real Kubernetes control plane on one machine (etcd, kube-apiserver and
kube-controller-manager built from Debian's sources), and the stand-ins that play the KServe and KubeRay
controllers, which cannot run without a kubelet."""
