//go:build tools

// helm, to lint and render weir's chart (install/helm/weir) in the tests
// and to generate install/weir.yaml. Built by scripts/tools.sh.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
