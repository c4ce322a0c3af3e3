#!/usr/bin/env python3
"""Runs Helm's own Go library (helm-sdkpy, installed by scripts/install-deps.sh) for the chart tests and for users
without a helm binary.

    helm.py lint CHART
    helm.py install RELEASE CHART NAMESPACE [VALUES_JSON]
    helm.py upgrade RELEASE CHART NAMESPACE [VALUES_JSON]
    helm.py uninstall RELEASE NAMESPACE

$KUBECONFIG names the cluster; $TSDB_HELM_PYTHONPATH the unpacked helm-sdkpy. Prints the result as JSON (an
install's or upgrade's carries the rendered `manifest`); exits 1 with Helm's error on failure.
"""

import asyncio
import json
import os
import sys

if not os.environ.get("TSDB_HELM_PYTHONPATH"):
    sys.exit("helm.py: $TSDB_HELM_PYTHONPATH is unset: run scripts/install-deps.sh and source its env.sh")
sys.path.insert(0, os.environ["TSDB_HELM_PYTHONPATH"])
import helm_sdkpy as helm  # noqa: E402


async def main(argv):
    verb = argv[0] if argv else ""
    kubeconfig = os.environ.get("KUBECONFIG")
    if verb == "lint":
        config = helm.Configuration(namespace="default", kubeconfig=kubeconfig)
        return await helm.Lint(config).run(argv[1])
    if verb in ("install", "upgrade"):
        release, chart, namespace = argv[1], argv[2], argv[3]
        values = json.loads(argv[4]) if len(argv) > 4 else {}
        config = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        if verb == "install":
            return await helm.Install(config).run(release, chart, values=values, wait=False, timeout=120)
        return await helm.Upgrade(config).run(release, chart, values=values, wait=False, timeout=120)
    if verb == "uninstall":
        config = helm.Configuration(namespace=argv[2], kubeconfig=kubeconfig)
        return await helm.Uninstall(config).run(argv[1], wait=True, timeout=120)
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        result = asyncio.run(main(sys.argv[1:]))
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, default=str))
