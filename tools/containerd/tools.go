//go:build tools

// The container runtime of the lab's real nodes: containerd 2.x, its runc
// shim and ctr. Built by scripts/tools.sh; nothing here is weir's code.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
