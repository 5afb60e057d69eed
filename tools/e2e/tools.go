//go:build tools

// Package tools pins what scripts/tools.sh builds for the conformance
// runs: Kubernetes' own end-to-end suite, `go test -c` of
// k8s.io/kubernetes/test/e2e (its test files pull in every area's tests,
// test/e2e/network and netpol among them).
package tools

import (
	_ "k8s.io/kubernetes/test/e2e"
)
