//go:build tools

// Package tools pins what scripts/tools.sh builds for the cluster-wide
// policy conformance runs: the conformance suite of
// sigs.k8s.io/network-policy-api (`go test -c` of its conformance package,
// whose tests apply ClusterNetworkPolicy objects and probe agnhost pods).
package tools

import (
	_ "sigs.k8s.io/network-policy-api/conformance/tests"
)
